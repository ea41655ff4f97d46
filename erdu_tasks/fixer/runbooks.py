"""Runbooks: the YAML model, loading and validating a directory, matching and ranking, the rate-limit decision."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AliasChoices, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, \
    model_validator

from erdu_tasks.fixer.actions import ACTIONS, needs_approval
from erdu_tasks.fixer.actions.base import PLACEHOLDERS, render_params, template_problems
from erdu_tasks.fixer.checks import CHECK_KINDS, COMMON_FIELDS, LITERAL_KEYS, CheckSpec, compile_pattern
from erdu_tasks.errors import ConfigError
from erdu_tasks.model import Severity

__all__ = ["Approval", "Limits", "Step", "Matcher", "Runbook", "MatchInput", "RunbookSet", "CheckSpec",
           "DEFAULT_RUNBOOKS_DIR", "PLACEHOLDERS", "check_runbooks", "placeholder_values", "rank",
           "render_params"]

DEFAULT_RUNBOOKS_DIR = Path(__file__).resolve().parents[1] / "defaults" / "runbooks"
"""The example runbooks shipped with ERDU (all dry runs until an operator adapts them)."""


class Approval(StrEnum):
    """Whether a person must say yes before the actions run."""

    NONE = "none"
    REQUIRED = "required"


def _as_list(value: Any) -> Any:
    """Let YAML say `service: web` as well as `services: [web, api]`."""
    return [value] if isinstance(value, str) else value


_StrList = Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_as_list)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Model):
    """At most max_runs runs in any per_seconds window (per runbook and service); then escalate.

    `backoff`: seconds to wait, after the last run in the window, before the next one; doubled for each
    further run in the window, at most `backoff_max`. Unset: RESTART_BACKOFF for a runbook that restarts
    a service, else 0 (no wait). For a restart the limit is a circuit breaker: the escalation says the
    service keeps dying and carries what was captured of it.
    """

    max_runs: int = Field(default=3, ge=1)
    per_seconds: float = Field(default=3600.0, gt=0)
    backoff: float | None = Field(default=None, ge=0, le=3600)
    backoff_max: float = Field(default=60.0, ge=0, le=3600)


class Step(_Model):
    """One action of a runbook: a registry name, its params (may use {service} and {host}), a timeout."""

    action: str
    params: dict[str, Any] = Field(default_factory=dict)
    timeout: float = Field(default=60.0, gt=0, le=3600)

    @field_validator("action")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in ACTIONS:
            raise ValueError(f"unknown action {name!r} (known: {', '.join(sorted(ACTIONS))})")
        return name


class Matcher(_Model):
    """Which incidents a runbook is for: every criterion given must hold (a list means any of its items).

    tags means all listed tags are on the incident; title_pattern is an RE2 regex searched in the title.
    """

    fingerprints: _StrList = Field(default_factory=list, validation_alias=AliasChoices("fingerprints", "fingerprint"))
    services: _StrList = Field(default_factory=list, validation_alias=AliasChoices("services", "service"))
    hosts: _StrList = Field(default_factory=list, validation_alias=AliasChoices("hosts", "host"))
    tags: _StrList = Field(default_factory=list, validation_alias=AliasChoices("tags", "tag"))
    severities: Annotated[list[Severity], BeforeValidator(_as_list)] = Field(
        default_factory=list, validation_alias=AliasChoices("severities", "severity"))
    title_pattern: str | None = None

    @field_validator("title_pattern")
    @classmethod
    def _re2(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            compile_pattern(pattern)
        return pattern

    @model_validator(mode="after")
    def _not_everything(self) -> "Matcher":
        if not (self.fingerprints or self.services or self.hosts or self.tags or self.title_pattern):
            raise ValueError("a matcher needs at least one of fingerprints, services, hosts, tags, title_pattern "
                             "(a runbook must not match every incident)")
        return self

    def matches(self, inc: MatchInput) -> bool:
        """True if the incident meets every criterion."""
        if self.fingerprints and inc.fingerprint not in self.fingerprints:
            return False
        if self.services and inc.service not in self.services:
            return False
        if self.hosts and inc.host not in self.hosts:
            return False
        if self.tags and not set(self.tags) <= set(inc.tags):
            return False
        if self.severities and inc.severity not in {s.value for s in self.severities}:
            return False
        if self.title_pattern is not None and not compile_pattern(self.title_pattern).search(inc.title or ""):
            return False
        return True

    @property
    def specificity(self) -> int:
        """How narrow the matcher is: an exact fingerprint beats a service, which beats a title or tags."""
        return (100 * bool(self.fingerprints) + 10 * bool(self.services) + 10 * bool(self.hosts)
                + 5 * bool(self.title_pattern) + len(self.tags) + bool(self.severities))

    def describe(self) -> str:
        """The matcher in one line, for `erdu runbooks ls`."""
        parts = []
        for label, values in (("fingerprint", self.fingerprints), ("service", self.services),
                              ("host", self.hosts), ("severity", [s.value for s in self.severities])):
            if values:
                parts.append(f"{label} in [{', '.join(values)}]")
        if self.tags:
            parts.append(f"tags include [{', '.join(self.tags)}]")
        if self.title_pattern is not None:
            parts.append(f"title ~ /{self.title_pattern}/")
        return " and ".join(parts)


RESTART_STABLE_FOR = 5.0
"""Seconds a runbook's check must keep passing after a restart action when it sets no `stable_for`."""

RESTART_BACKOFF = 2.0
"""Seconds a restart waits after the previous restart of the same service (doubled for each further one in
the limit's window) when the runbook's limits set no `backoff`."""


class Runbook(_Model):
    """A named remedy: when it applies, what to run, how to prove it worked, how to undo, and its limits.

    `recurrence_window`: seconds after a validated fix in which a new incident of the same fingerprint
    marks that fix failed after the fact (unset: `learning.recurrence_window_seconds`; 0: never).
    """

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    description: str = ""
    match: Matcher
    diagnosis_hint: str = ""
    actions: list[Step] = Field(min_length=1)
    validation: CheckSpec | None = None
    rollback: list[Step] = Field(default_factory=list)
    approval: Approval = Approval.NONE
    limits: Limits = Field(default_factory=Limits)
    dry_run: bool = False
    recurrence_window: float | None = Field(default=None, ge=0, le=7 * 86400)

    @model_validator(mode="before")
    @classmethod
    def _approval_by_default(cls, data: Any) -> Any:
        """A runbook that does not say `approval:` and uses an action needing approval requires it."""
        if isinstance(data, dict) and "approval" not in data:
            steps = [*(data.get("actions") or []), *(data.get("rollback") or [])]
            if any(isinstance(s, dict) and needs_approval(str(s.get("action"))) for s in steps):
                return {**data, "approval": Approval.REQUIRED.value}
        return data

    @property
    def stable_for(self) -> float:
        """How long the validation check must keep passing: its `stable_for`, else 5 s after a restart, else 0."""
        if self.validation is None:
            return 0.0
        if self.validation.stable_for is not None:
            return float(self.validation.stable_for)
        return RESTART_STABLE_FOR if any(step.action == "restart" for step in self.actions) else 0.0

    @property
    def restarts(self) -> bool:
        """True for a runbook with a restart step: its limit is a crash-loop circuit breaker."""
        return any(step.action == "restart" for step in self.actions)

    @property
    def backoff(self) -> float:
        """Seconds to wait after the previous run in the window: the limits' `backoff`, else 2 s for a restart."""
        if self.limits.backoff is not None:
            return float(self.limits.backoff)
        return RESTART_BACKOFF if self.restarts else 0.0

    @property
    def remedial(self) -> bool:
        """False for a runbook that only verifies (every action a noop): it never earns auto-resolution."""
        return any(step.action != "noop" for step in self.actions)


@dataclass(frozen=True)
class MatchInput:
    """The incident fields a matcher looks at."""

    fingerprint: str
    service: str | None = None
    tags: tuple[str, ...] = ()
    severity: str | None = None
    title: str = ""
    host: str | None = None

    @classmethod
    def from_incident(cls, incident: Any) -> "MatchInput":
        """Build from anything shaped like model.Incident."""
        severity = getattr(incident, "severity", None)
        return cls(fingerprint=incident.fingerprint, service=getattr(incident, "service", None),
                   tags=tuple(getattr(incident, "tags", ()) or ()),
                   severity=None if severity is None else str(getattr(severity, "value", severity)),
                   title=getattr(incident, "title", "") or "", host=getattr(incident, "host", None))


def placeholder_values(incident: Any) -> dict[str, str | None]:
    """The allowlisted incident fields a runbook's params may use; values are checked when rendered."""
    return {name: getattr(incident, name, None) for name in sorted(PLACEHOLDERS)}


def rank(runbooks: Iterable[Runbook], success_rates: Mapping[str, float] | None = None,
         unknown_rate: float = 0.5) -> list[Runbook]:
    """Best first: learned success rate (by runbook name), then the narrower matcher, then file order."""
    rates = success_rates or {}
    indexed = list(enumerate(runbooks))
    indexed.sort(key=lambda p: (-rates.get(p[1].name, unknown_rate), -p[1].match.specificity, p[0]))
    return [rb for _, rb in indexed]


# --------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys (the second `actions:` would silently win)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]


def _node_at(node: yaml.Node | None, loc: Sequence[str | int]) -> yaml.Node | None:
    """The deepest YAML node along loc, for a line number."""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            nxt = node.value[part]
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
    return node


def _loc_str(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(runbook)"


_MESSAGES = {"extra_forbidden": "unknown field", "missing": "required field is missing"}


def _pydantic_problems(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[tuple[tuple, str]]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        if loc[:1] == ("validation",) and len(loc) > 1 and loc[1] in CHECK_KINDS:
            loc = loc[:1] + loc[2:]  # drop the union tag pydantic adds
        msg = _MESSAGES.get(err["type"], err["msg"]).removeprefix("Value error, ")
        problems.append((prefix + loc, msg))
    return problems


def _step_problems(raw: Mapping[str, Any]) -> list[tuple[tuple, str]]:
    """Placeholders and action params of every step, checked on the raw data so all problems show at once."""
    problems: list[tuple[tuple, str]] = []
    for section in ("actions", "rollback"):
        steps = raw.get(section)
        if not isinstance(steps, list):
            continue
        for i, step in enumerate(steps):
            if not isinstance(step, dict):
                continue
            params = step.get("params", {})
            where: tuple[str | int, ...] = (section, i, "params")
            found = [(where + p, m) for p, m in template_problems(params)]
            problems += found
            action = ACTIONS.get(step["action"]) if isinstance(step.get("action"), str) else None
            if action is not None and isinstance(params, dict) and not found:
                try:
                    action.Params.model_validate(params)
                except ValidationError as exc:
                    problems += _pydantic_problems(exc, where)
    check = raw.get("validation")
    if isinstance(check, dict):
        literal = COMMON_FIELDS | LITERAL_KEYS.get(str(check.get("check")), frozenset())
        problems += [(("validation",) + p, m) for p, m in template_problems(check, literal_keys=literal)]
    return problems


def _runbook_problems(raw: Mapping[str, Any]) -> list[tuple[tuple, str]]:
    try:
        Runbook.model_validate(raw)
        problems = []
    except ValidationError as exc:
        problems = _pydantic_problems(exc)
    return problems + _step_problems(raw)


@dataclass
class _Loaded:
    runbooks: list[Runbook] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    seen: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _load_file(path: Path, into: _Loaded) -> None:
    try:
        node, data = _parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        into.problems.append(f"{path}: cannot read: {exc}")
        return
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        into.problems.append(f"{where}: YAML error: {exc.problem or exc.context}")
        return
    except yaml.YAMLError as exc:
        into.problems.append(f"{path}: YAML error: {exc}")
        return
    if data is None:
        return
    if isinstance(data, dict) and "runbooks" in data:
        if set(data) != {"runbooks"}:
            extra = ", ".join(sorted(str(k) for k in data if k != "runbooks"))
            into.problems.append(f"{path}:1: unknown top-level key(s) {extra}; a file holds `runbooks:` only")
        items, list_node = data["runbooks"], _node_at(node, ("runbooks",))
        if not isinstance(items, list):
            into.problems.append(f"{path}:{list_node.start_mark.line + 1 if list_node else 1}: "
                                 "`runbooks:` must be a list of runbooks")
            return
        nodes = [_node_at(list_node, (i,)) for i in range(len(items))]
    elif isinstance(data, dict):
        items, nodes = [data], [node]
    else:
        into.problems.append(f"{path}:1: expected a mapping: either `runbooks: [...]` or one runbook")
        return
    found: list[tuple[int, str]] = []
    for i, (raw, rb_node) in enumerate(zip(items, nodes)):
        name = raw.get("name") if isinstance(raw, dict) else None
        label = f"runbook {name!r}" if isinstance(name, str) else f"runbook #{i + 1}"
        line = rb_node.start_mark.line + 1 if rb_node is not None else 1
        if not isinstance(raw, dict):
            found.append((line, f"{path}:{line}: {label}: expected a mapping"))
            continue
        problems = _runbook_problems(raw)
        for loc, msg in problems:
            at = _node_at(rb_node, loc)
            at_line = at.start_mark.line + 1 if at is not None else line
            found.append((at_line, f"{path}:{at_line}: {label}: {_loc_str(loc)}: {msg}"))
        if isinstance(name, str):
            if name in into.seen:
                found.append((line, f"{path}:{line}: {label}: name: duplicate name, first defined at "
                                    f"{into.seen[name]}"))
                continue
            into.seen[name] = f"{path}:{line}"
        if not problems:
            runbook = Runbook.model_validate(raw)
            into.runbooks.append(runbook)
            into.sources[runbook.name] = f"{path}:{line}"
    into.problems.extend(msg for _, msg in sorted(found, key=lambda p: p[0]))


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith(".")
                  and p.is_file())


def directory_signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, mtime_ns, size) of every runbook file: compare two to know whether to reload."""
    try:
        files = _files(path)
    except OSError:
        return ()
    out = []
    for p in files:
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


def _load(path: Path) -> _Loaded:
    loaded = _Loaded()
    if not path.exists():
        loaded.problems.append(f"{path}: runbooks directory does not exist")
        return loaded
    for file in _files(path):
        _load_file(file, loaded)
    return loaded


def check_runbooks(path: Path | None = None) -> list[str]:
    """Every problem in a runbook directory (or file), one line each naming file:line, runbook and field."""
    return _load(path or DEFAULT_RUNBOOKS_DIR).problems


@dataclass(frozen=True)
class RunbookSet:
    """The loaded runbooks of one directory, in file order."""

    runbooks: tuple[Runbook, ...]
    sources: Mapping[str, str] = field(default_factory=dict)
    path: Path | None = None
    signature: tuple[tuple[str, int, int], ...] = ()

    @classmethod
    def load(cls, directory: Path | None = None) -> "RunbookSet":
        """Load and validate every *.yaml/*.yml (default: the shipped examples); ConfigError lists every problem."""
        path = Path(directory) if directory is not None else DEFAULT_RUNBOOKS_DIR
        signature = directory_signature(path)
        loaded = _load(path)
        if loaded.problems:
            raise ConfigError(f"{len(loaded.problems)} problem(s) in runbooks at {path}:\n"
                              + "\n".join(f"  {p}" for p in loaded.problems))
        return cls(tuple(loaded.runbooks), dict(loaded.sources), path, signature)

    def changed(self) -> bool:
        """True if the files on disk differ from what was loaded."""
        return self.path is not None and directory_signature(self.path) != self.signature

    def get(self, name: str) -> Runbook | None:
        """The runbook called name, if any."""
        return next((rb for rb in self.runbooks if rb.name == name), None)

    def match(self, incident: MatchInput, success_rates: Mapping[str, float] | None = None) -> list[Runbook]:
        """The runbooks whose matcher fits the incident, best first (see rank)."""
        return rank((rb for rb in self.runbooks if rb.match.matches(incident)), success_rates)
