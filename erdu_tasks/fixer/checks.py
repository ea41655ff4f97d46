"""Validation checks the fixer re-runs after a runbook's actions: http, process, command, log_absent, noop."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError, field_validator, model_validator

from erdu_tasks.fixer.urlguard import DEFAULT_POLICY, UrlPolicy
from erdu_tasks.fixer.actions.base import ActionResult, ParamsModel, as_int_list, build_env, http_exchange, render_params, run_argv
from erdu_tasks.fixer.actions.http_call import Method, check_url
from erdu_tasks.errors import PermanentError
from erdu_tasks.settings.common import compile_pattern


class CheckResult(ActionResult):
    """The outcome of one validation check: the same shape as an action's result."""


class _Check(ParamsModel):
    """Common to every check: a timeout, a settle delay, how many attempts (interval apart) may pass it, and
    how long it must then keep passing (`stable_for` seconds, re-checked every `interval`).

    `stable_for` unset means the runbook's default: 5 s after a restart action, else 0 (see
    fixer/runbooks.Runbook.stable_for); a process that dies seconds after every restart never counts as fixed.
    """

    timeout: float = Field(default=10.0, gt=0, le=3600)
    delay: float = Field(default=0.0, ge=0, le=600)
    attempts: int = Field(default=1, ge=1, le=100)
    interval: float = Field(default=1.0, ge=0, le=600)
    stable_for: float | None = Field(default=None, ge=0, le=3600)


class HttpCheck(_Check):
    """An HTTP request whose status (default any 2xx), latency and body must fit; the shape a probe uses."""

    check: Literal["http"]
    url: str
    method: Method = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    expect_status: Annotated[list[int] | None, BeforeValidator(as_int_list)] = None
    max_latency: float | None = Field(default=None, gt=0)
    body_contains: str | None = None
    verify_tls: bool = True

    @field_validator("url")
    @classmethod
    def _http_only(cls, url: str) -> str:
        return check_url(url)


class ProcessCheck(_Check):
    """A process is running: by name, by pid file, or by a substring of its command line."""

    check: Literal["process"]
    name: str | None = Field(default=None, min_length=1)
    pidfile: str | None = Field(default=None, min_length=1)
    cmdline_contains: str | None = Field(default=None, min_length=1)
    min_count: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _one_selector(self) -> "ProcessCheck":
        given = [k for k in ("name", "pidfile", "cmdline_contains") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of name, pidfile, cmdline_contains (got {', '.join(given) or 'none'})")
        return self


class CommandCheck(_Check):
    """An argv (no shell) that must exit with an accepted code (default 0)."""

    check: Literal["command"]
    argv: list[str] = Field(min_length=1)
    env: dict[str, str] = Field(default_factory=dict)
    env_passthrough: list[str] = Field(default_factory=list)
    cwd: str | None = None
    expect_exit: Annotated[list[int], BeforeValidator(as_int_list)] = Field(default_factory=lambda: [0])


class LogAbsentCheck(_Check):
    """A regex must not appear in the bytes appended to a file during `window` seconds."""

    check: Literal["log_absent"]
    path: str = Field(min_length=1)
    pattern: str
    window: float = Field(default=60.0, gt=0, le=3600)

    @field_validator("pattern")
    @classmethod
    def _re2(cls, pattern: str) -> str:
        compile_pattern(pattern)
        return pattern


class NoopCheck(_Check):
    """Passes (or fails if asked): for tests and for runbooks that need no validation."""

    check: Literal["noop"]
    fail: bool = False


class QuietCheck(_Check):
    """The incident's own error must not recur for `window` seconds (its occurrences stop rising).

    Run by the fixer, which reads the incident's occurrence count from Postgres before and after.
    """

    check: Literal["quiet"]
    window: float = Field(default=10.0, gt=0, le=3600)


class FromIncidentCheck(_Check):
    """Re-run the check the detecting monitor stored on the incident (`error_details["check"]`, e.g. an
    HTTP probe). Resolved by the fixer, which has the incident; this check's delay/attempts/interval apply."""

    check: Literal["from_incident"]


class FromCatalogCheck(_Check):
    """Re-run the health check of the incident's service from the service catalog (its `health:` url or
    argv). Resolved by the fixer, which has the catalog; this check's delay/attempts/interval apply."""

    check: Literal["from_catalog"]


CheckSpec = Annotated[
    Union[HttpCheck, ProcessCheck, CommandCheck, LogAbsentCheck, NoopCheck, QuietCheck, FromIncidentCheck,
          FromCatalogCheck],
    Field(discriminator="check"),
]
"""A runbook's `validation:` block; `check:` names the kind."""

CHECK_KINDS: tuple[str, ...] = ("http", "process", "command", "log_absent", "noop", "quiet", "from_incident",
                                "from_catalog")

LITERAL_KEYS: dict[str, frozenset[str]] = {"log_absent": frozenset({"pattern"})}
"""Fields that are never templated (a regex's {n,m} is not a placeholder)."""

COMMON_FIELDS = frozenset({"check", "timeout", "delay", "attempts", "interval", "stable_for"})
"""Fields every check has; never templated."""


def _http(spec: HttpCheck, policy: UrlPolicy = DEFAULT_POLICY) -> CheckResult:
    r = http_exchange(spec.method, spec.url, timeout=spec.timeout, headers=spec.headers,
                      expect_status=spec.expect_status, max_latency=spec.max_latency,
                      body_contains=spec.body_contains, verify_tls=spec.verify_tls, policy=policy)
    return CheckResult(r.ok, r.detail, r.duration, r.output)


def _process(spec: ProcessCheck) -> CheckResult:
    import psutil   # where a process is looked at: a worker that captures or checks none never imports it

    started = time.monotonic()
    if spec.pidfile is not None:
        try:
            pid = int(Path(spec.pidfile).read_text().strip())
        except (OSError, ValueError) as exc:
            return CheckResult(False, f"cannot read pid file {spec.pidfile}: {exc}", time.monotonic() - started)
        try:
            proc = psutil.Process(pid)
            alive = proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            alive = False
        detail = f"pid {pid} from {spec.pidfile} is " + ("running" if alive else "not running")
        return CheckResult(alive, detail, time.monotonic() - started, {"pid": pid})
    pids = []
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        info = proc.info
        if info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        cmdline = info.get("cmdline") or []
        if spec.name is not None:
            hit = info.get("name") == spec.name or (bool(cmdline) and os.path.basename(cmdline[0]) == spec.name)
        else:
            hit = spec.cmdline_contains in " ".join(cmdline)
        if hit and proc.pid != os.getpid():
            pids.append(proc.pid)
    what = f"name {spec.name!r}" if spec.name is not None else f"command line containing {spec.cmdline_contains!r}"
    ok = len(pids) >= spec.min_count
    detail = f"{len(pids)} process(es) with {what}" + ("" if ok else f", expected at least {spec.min_count}")
    return CheckResult(ok, detail, time.monotonic() - started, {"pids": pids[:50]})


def _command(spec: CommandCheck) -> CheckResult:
    r = run_argv(spec.argv, timeout=spec.timeout, cwd=spec.cwd, env=build_env(spec.env_passthrough, spec.env),
                 expect_exit=spec.expect_exit)
    return CheckResult(r.ok, r.detail, r.duration, r.output)


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_absent(spec: LogAbsentCheck, poll: float = 0.2) -> CheckResult:
    """Watch only bytes written after the check starts; follow truncation and rotation."""
    started = time.monotonic()
    path, regex = Path(spec.path), compile_pattern(spec.pattern)
    file_id, offset = _file_id(path), _size(path)
    carry = b""
    deadline = started + spec.window
    while True:
        final = time.monotonic() >= deadline
        now_id = _file_id(path)
        if now_id != file_id or _size(path) < offset:  # rotated or truncated: read the new file from its start
            file_id, offset, carry = now_id, 0, b""
        if now_id is not None:
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read(4 * 1024 * 1024)
            offset += len(chunk)
            lines = (carry + chunk).split(b"\n")
            carry = lines.pop()[-65536:]
            for line in lines + ([carry] if final else []):
                text = line.decode("utf-8", "replace")
                if regex.search(text):
                    return CheckResult(False, f"{spec.pattern!r} seen in {path} after "
                                       f"{time.monotonic() - started:.1f}s: {text[:200]}",
                                       time.monotonic() - started, {"line": text[:1000]})
        if final:
            return CheckResult(True, f"{spec.pattern!r} not seen in {path} for {spec.window:g}s",
                               time.monotonic() - started)
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


def _noop(spec: NoopCheck) -> CheckResult:
    return CheckResult(not spec.fail, "noop check failed as asked" if spec.fail else "noop check passed")


_RUNNERS = {"http": _http, "process": _process, "command": _command, "log_absent": _log_absent, "noop": _noop}


def check_from_incident(spec: FromIncidentCheck, error_details: Mapping[str, Any]) -> Any:
    """The check stored on an incident, with the runbook's timing; PermanentError if it has none."""
    raw = error_details.get("check")
    if not isinstance(raw, Mapping) or raw.get("check") in (None, "from_incident", "quiet"):
        raise PermanentError("the incident carries no re-runnable check in error_details.check")
    timing = {k: getattr(spec, k) for k in ("delay", "attempts", "interval", "stable_for") if k in spec.model_fields_set}
    try:
        return TypeAdapter(CheckSpec).validate_python({**raw, **timing})
    except ValidationError as exc:
        raise PermanentError(f"the incident's stored check is invalid: {exc.errors()[0]['msg']}") from None


def check_from_catalog(spec: FromCatalogCheck, catalog: Any, service: str | None) -> Any:
    """The service's catalog health check, with the runbook's timing; PermanentError if there is none."""
    entry = catalog.services.get(service) if catalog is not None and service else None
    if entry is None:
        raise PermanentError(f"service {service or '-'} is not in the service catalog: no health check to re-run")
    if entry.health is None:
        raise PermanentError(f"the catalog entry of {service} has no health check (health: url or argv)")
    timing = {k: getattr(spec, k) for k in ("delay", "attempts", "interval", "stable_for", "timeout")
              if k in spec.model_fields_set}
    try:
        return TypeAdapter(CheckSpec).validate_python({**entry.health.check_spec(), **timing})
    except ValidationError as exc:
        raise PermanentError(f"the catalog health check of {service} is invalid: {exc.errors()[0]['msg']}") from None


def render_check(spec: Any, allowed_fields: Mapping[str, object], policy: UrlPolicy = DEFAULT_POLICY) -> Any:
    """The check with {service}/{host} substituted; PermanentError if a value is unsafe or a host refused."""
    raw = spec.model_dump(by_alias=True)
    literal = COMMON_FIELDS | LITERAL_KEYS.get(spec.check, frozenset())
    rendered = render_params(raw, allowed_fields, literal_keys=literal, policy=policy)
    try:
        return type(spec).model_validate(rendered)
    except ValidationError as exc:
        raise PermanentError(f"invalid {spec.check} check after rendering: {exc.errors()[0]['msg']}") from None


def run_check(spec: Any, allowed_fields: Mapping[str, object], *, stable_for: float | None = None,
              url_policy: UrlPolicy = DEFAULT_POLICY) -> CheckResult:
    """Run a validation check (after its delay, up to `attempts` times) and, once it passes, keep re-running it
    every `interval` until it has held for `stable_for` seconds (the argument, else the check's own); never raises.

    A check that watches a window (log_absent) has its window extended by `stable_for` instead.
    `url_policy` says where an HTTP check may go (erdu_tasks/fixer/urlguard.py).
    """
    started = time.monotonic()
    try:
        rendered = render_check(spec, allowed_fields, url_policy)
    except PermanentError as exc:
        return CheckResult(False, f"refused: {exc}", time.monotonic() - started)
    hold = float(stable_for if stable_for is not None else (rendered.stable_for or 0.0))
    if hold and hasattr(rendered, "window"):
        rendered, hold = rendered.model_copy(update={"window": rendered.window + hold}), 0.0
    if rendered.delay:
        time.sleep(rendered.delay)
    result = CheckResult(False, "not run")
    for attempt in range(1, rendered.attempts + 1):
        result = _once(rendered, url_policy)
        if result.ok or attempt == rendered.attempts:
            break
        time.sleep(rendered.interval)
    output = {**result.output, "check": rendered.check, "attempts": attempt}
    if result.ok and hold > 0:
        result, held = _hold(rendered, hold, url_policy)
        output.update(result.output, check=rendered.check, attempts=attempt, stable_for=hold, held=round(held, 3))
    return CheckResult(result.ok, result.detail, time.monotonic() - started, output)


def _once(rendered: Any, url_policy: UrlPolicy = DEFAULT_POLICY) -> CheckResult:
    try:
        if rendered.check == "http":
            return _http(rendered, url_policy)
        return _RUNNERS[rendered.check](rendered)
    except Exception as exc:  # a check bug is a failed check, visible on the timeline
        return CheckResult(False, f"{rendered.check} check raised {type(exc).__name__}: {exc}")


def _hold(rendered: Any, seconds: float, url_policy: UrlPolicy = DEFAULT_POLICY) -> tuple[CheckResult, float]:
    """Re-run a passing check until it has held for `seconds`; the first failure ends it. (result, seconds held)."""
    passed_at = time.monotonic()
    last = CheckResult(True, "not re-checked")
    checks = 0
    while True:
        held = time.monotonic() - passed_at
        if held >= seconds:
            return CheckResult(True, f"{last.detail if checks else 'passed'}; held for {seconds:g} s "
                                     f"({checks} re-check(s))", held, last.output), held
        time.sleep(min(max(rendered.interval, 0.1), seconds - held))
        last = _once(rendered, url_policy)
        checks += 1
        if not last.ok:
            held = time.monotonic() - passed_at
            return CheckResult(False, f"passed, then failed {held:.1f} s later (it must hold for {seconds:g} s): "
                                      f"{last.detail}", held, last.output), held
