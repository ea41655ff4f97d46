"""The action contract and the safe primitives actions and checks are built from.

Safety rules live here, once: runbook parameters may only use the `{service}` and `{host}`
placeholders, their values must pass a strict charset, commands run as argv lists without
a shell, in their own process group, with a timeout, a small environment and capped output.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import string
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict

from erdu_tasks.catalog import CATALOG_FIELDS
from erdu_tasks.errors import PermanentError
from erdu_tasks.fixer.urlguard import DEFAULT_POLICY, UrlPolicy, UrlRefused

if TYPE_CHECKING:
    import httpx   # imported where a request is made: most processes never make one

PLACEHOLDERS: frozenset[str] = frozenset({"service", "host"})
"""The only incident fields a runbook may put into a command, URL or request."""

CATALOG_PLACEHOLDERS: frozenset[str] = frozenset(f"catalog.{name}" for name in CATALOG_FIELDS)
"""Fields of the incident's service catalog entry (`{catalog.systemd}`...), under the same value check."""

SAFE_VALUE = re.compile(r"[A-Za-z0-9_.@:-]{1,128}")
"""A placeholder value must fullmatch this: no spaces, quotes, slashes, `$`, `;`, backticks..."""

OUTPUT_CAP = 8192
"""Bytes of stdout / stderr / response body kept per run."""

DEFAULT_ENV_PASSTHROUGH: tuple[str, ...] = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")
"""Environment variables a command inherits unless a runbook names more."""

_URL_KEYS = frozenset({"url"})
_FORMATTER = string.Formatter()


@dataclass(frozen=True)
class ActionResult:
    """What one action run did: ok or not, a one-line detail, how long, and structured output."""

    ok: bool
    detail: str
    duration: float = 0.0
    output: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict for the incident's timeline."""
        return asdict(self)


@dataclass(frozen=True)
class ActionContext:
    """What an action may know besides its parameters."""

    timeout: float
    redis_url: str | None = None
    idempotency_key: str | None = None
    url_policy: UrlPolicy = DEFAULT_POLICY


class Action(Protocol):
    """An action module: NAME, a pydantic Params model, describe() and run().

    An action does not undo itself: a runbook lists the steps that undo its fix under `rollback`.
    """

    NAME: str
    Params: type[BaseModel]

    def describe(self, params: Any) -> str:
        """One line saying what run() would do, without secrets."""
        ...

    def run(self, params: Any, ctx: ActionContext) -> ActionResult:
        """Do the thing; report failures as ok=False rather than raising."""
        ...


class ParamsModel(BaseModel):
    """Base of every action's and check's params: unknown keys are errors, numbers may stand for strings."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, frozen=True)


# --------------------------------------------------------------------------- placeholders


def template_fields(template: str) -> list[str]:
    """The placeholder names in a template; raises ValueError for malformed or disallowed ones."""
    try:
        parts = list(_FORMATTER.parse(template))
    except ValueError as exc:
        raise ValueError(f"malformed braces ({exc}); write {{{{ and }}}} for literal braces") from None
    names = []
    for _literal, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in PLACEHOLDERS | CATALOG_PLACEHOLDERS or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(
                f"placeholder {shown} is not allowed; only {{service}} and {{host}} may be used, and "
                f"{{catalog.FIELD}} for {', '.join(sorted(CATALOG_FIELDS))} (write {{{{ and }}}} for literal braces)"
            )
        names.append(name)
    return names


def template_problems(value: Any, path: tuple[str | int, ...] = (),
                      literal_keys: Iterable[str] = ()) -> list[tuple[tuple[str | int, ...], str]]:
    """Every malformed or disallowed placeholder in a params tree, as (path, message)."""
    literal = frozenset(literal_keys)
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if isinstance(value, str):
        try:
            template_fields(value)
        except ValueError as exc:
            problems.append((path, str(exc)))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not (path == () and key in literal):
                problems.extend(template_problems(item, path + (key,)))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problems.extend(template_problems(item, path + (i,)))
    return problems


def safe_value(name: str, value: object) -> str:
    """Return value if it may go into an argv or URL; raise PermanentError saying why not."""
    if value is None or value == "":
        whose = (f"the service's catalog entry to set {name.removeprefix('catalog.')}" if name.startswith("catalog.")
                 else f"the incident's {name}")
        raise PermanentError(f"placeholder {{{name}}} needs {whose}, which is not set")
    text = str(value)
    if not SAFE_VALUE.fullmatch(text) or text.startswith("-") or ".." in text:
        shown = text if len(text) <= 80 else text[:80] + "…"
        raise PermanentError(
            f"refused {name} value {shown!r}: only letters, digits and _ . @ : - are allowed "
            "(1-128 characters, not starting with '-', no '..')"
        )
    return text


def _render_str(template: str, allowed: Mapping[str, object], *, url: bool,
                policy: UrlPolicy = DEFAULT_POLICY) -> str:
    try:
        parts = list(_FORMATTER.parse(template))
        template_fields(template)
    except ValueError as exc:
        raise PermanentError(f"bad template {template[:80]!r}: {exc}") from None
    out = []
    for literal, name, _spec, _conversion in parts:
        out.append(literal)
        if name is not None:
            value = safe_value(name, allowed.get(name))
            out.append(quote(value, safe="") if url else value)
    rendered = "".join(out)
    if url:
        policy.check_rendered_url(template, rendered)
    return rendered


def render_params(params: Mapping[str, Any], allowed: Mapping[str, object],
                  *, literal_keys: Iterable[str] = (), policy: UrlPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    """Substitute {service}/{host} from `allowed` into every string of a params tree.

    Values are checked against SAFE_VALUE; under a key named `url` they are also
    percent-encoded, and a placeholder that fills a URL's host must give a host the
    policy allowlists (erdu_tasks/fixer/urlguard.py). Top-level `literal_keys` (e.g. a
    regex) are copied untouched. Raises PermanentError for an unknown placeholder, an
    unsafe / missing value or a refused host.
    """
    literal = frozenset(literal_keys)

    def walk(value: Any, key: object) -> Any:
        if isinstance(value, str):
            return _render_str(value, allowed, url=key in _URL_KEYS, policy=policy)
        if isinstance(value, Mapping):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, key) for v in value]
        return value

    return {k: (v if k in literal else walk(v, k)) for k, v in params.items()}


# --------------------------------------------------------------------------- commands


def build_env(passthrough: Iterable[str] = (), extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A small environment: the default allowlist plus named variables, plus explicit values."""
    env = {}
    for name in (*DEFAULT_ENV_PASSTHROUGH, *passthrough):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(extra or {})
    return env


def _read_capped(handle: IO[bytes], cap: int = OUTPUT_CAP) -> str:
    size = handle.seek(0, os.SEEK_END)
    handle.seek(0)
    if size <= cap:
        data = handle.read()
        return data.decode("utf-8", "replace")
    head_len = cap // 4
    head = handle.read(head_len)
    handle.seek(size - (cap - head_len))
    tail = handle.read()
    cut = size - len(head) - len(tail)
    return head.decode("utf-8", "replace") + f"\n…[{cut} bytes cut]…\n" + tail.decode("utf-8", "replace")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, give it a moment, then SIGKILL whatever is left."""
    for sig, grace in ((signal.SIGTERM, 1.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        if grace is not None:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
    proc.wait()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def command_line(argv: Sequence[str]) -> str:
    """An argv shown as a copy-pasteable command line."""
    return shlex.join(argv)


def run_argv(argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
             cwd: str | None = None, expect_exit: Iterable[int] = (0,)) -> ActionResult:
    """Run argv without a shell in its own process group; kill the group on timeout.

    Output goes to temporary files (so a chatty or daemonising child can neither fill memory
    nor hold a pipe open) and only OUTPUT_CAP bytes of each stream are kept.
    """
    argv = [str(a) for a in argv]
    expected = tuple(expect_exit)
    started = time.monotonic()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(  # noqa: S603 - argv list, never a shell
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                env=dict(env) if env is not None else build_env(), cwd=cwd,
                start_new_session=True, close_fds=True,
            )
        except FileNotFoundError:
            return ActionResult(False, f"command not found: {argv[0]}", time.monotonic() - started,
                                {"argv": argv})
        except OSError as exc:
            return ActionResult(False, f"cannot start {argv[0]}: {exc.strerror or exc}",
                                time.monotonic() - started, {"argv": argv})
        timed_out = False
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            code = proc.returncode
        duration = time.monotonic() - started
        stdout, stderr = _read_capped(out), _read_capped(err)
    output = {"argv": argv, "exit_code": code, "stdout": stdout, "stderr": stderr, "timed_out": timed_out}
    if timed_out:
        return ActionResult(False, f"timed out after {timeout:g}s; process group killed", duration, output)
    if code in expected:
        return ActionResult(True, f"exit {code} in {duration:.2f}s", duration, output)
    why = _last_line(stderr) or _last_line(stdout)
    return ActionResult(False, f"exit {code}" + (f": {why}" if why else ""), duration, output)


# --------------------------------------------------------------------------- HTTP


def as_int_list(value: Any) -> Any:
    """Let YAML say `expect_status: 200` or `[200, 204]`."""
    return [value] if isinstance(value, int) else value


def http_exchange(method: str, url: str, *, timeout: float, headers: Mapping[str, str] | None = None,
                  json_body: Any = None, expect_status: Sequence[int] | None = None,
                  max_latency: float | None = None, body_contains: str | None = None,
                  verify_tls: bool = True, policy: UrlPolicy = DEFAULT_POLICY) -> ActionResult:
    """One HTTP request with a total deadline and a capped body; ok when status/latency/body fit.

    The request goes to the address the policy checked after resolving the URL's host (never a
    link-local or metadata address by default), and redirects are not followed.
    """
    import httpx

    started = time.monotonic()
    output: dict[str, Any] = {"method": method, "url": url}
    body = bytearray()
    try:
        target, host_header, extensions = policy.pin(url)
    except UrlRefused as exc:
        return ActionResult(False, f"refused: {exc}", time.monotonic() - started, output)
    except (httpx.InvalidURL, ValueError) as exc:
        return ActionResult(False, f"refused: invalid URL: {exc}", time.monotonic() - started, output)
    output["address"] = target.host
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, verify=verify_tls, trust_env=False) as client:
            given = dict(headers or {})
            if any(name.lower() == "host" for name in given):   # the runbook's own Host header wins
                host_header = {}
            kwargs: dict[str, Any] = {"headers": {**host_header, **given}, "extensions": extensions}
            if json_body is not None:
                kwargs["json"] = json_body
            with client.stream(method, target, **kwargs) as response:
                latency = time.monotonic() - started
                for chunk in response.iter_bytes():
                    body.extend(chunk)
                    if len(body) >= OUTPUT_CAP:
                        break
                    if time.monotonic() - started > timeout:
                        return ActionResult(False, f"timed out after {timeout:g}s reading the body",
                                            time.monotonic() - started, {**output, "failure": "timeout"})
                status = response.status_code
    except httpx.TimeoutException:
        return ActionResult(False, f"timed out after {timeout:g}s: {method} {url}", time.monotonic() - started,
                            {**output, "failure": "timeout"})
    except httpx.ConnectError as exc:
        failure = "refused" if "refused" in str(exc).lower() else "unreachable"
        return ActionResult(False, f"{type(exc).__name__}: {exc}", time.monotonic() - started,
                            {**output, "failure": failure})
    except httpx.HTTPError as exc:
        return ActionResult(False, f"{type(exc).__name__}: {exc}", time.monotonic() - started,
                            {**output, "failure": "error"})
    duration = time.monotonic() - started
    text = bytes(body[:OUTPUT_CAP]).decode("utf-8", "replace")
    output.update(status=status, latency=round(latency, 4), body=text)
    if expect_status is not None and status not in expect_status:
        return ActionResult(False, f"{method} {url} returned {status}, expected {list(expect_status)}", duration,
                            {**output, "failure": "status"})
    if expect_status is None and not 200 <= status < 300:
        return ActionResult(False, f"{method} {url} returned {status}, expected 2xx", duration,
                            {**output, "failure": "status"})
    if max_latency is not None and latency > max_latency:
        return ActionResult(False, f"{method} {url} took {latency:.3f}s, more than {max_latency:g}s", duration,
                            {**output, "failure": "slow"})
    if body_contains is not None and body_contains not in text:
        return ActionResult(False, f"{method} {url} body lacks {body_contains!r}", duration,
                            {**output, "failure": "body"})
    return ActionResult(True, f"{method} {url} returned {status} in {latency:.3f}s", duration, output)
