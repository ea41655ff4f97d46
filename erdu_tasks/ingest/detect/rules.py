"""Classification rules from YAML: ignore, severity, tags and titles.

A rule file is a mapping::

    version: 1                  # optional
    defaults: true              # user file only: false drops every built-in rule
    disable: [health-check-noise]   # user file only: built-in rules to drop, by name
    default_severity: P3        # when no rule gives one and the event has no hint
    rules:
      - name: payments-down     # unique; shown in Classification.rule_names
        match: {message: 'payment.*declined', service: '^checkout$', labels.env: prod}
        unless: {host: '^staging-'}
        case_sensitive: false   # default: patterns ignore case (as the original sketch did)
        ignore: false           # true drops the event before it reaches the database
        severity: P1
        force: false            # true: this severity beats the event's own hint
        tags: [payments]
        title: 'Payments declined on {service}'   # {service} {host} {source} or a named group

Fields are ``message``, ``source``, ``service``, ``host`` and ``labels.<key>``. ``message`` is the
text after a log line's header (timestamp, host, ``program[pid]:``, logger; see erdu_tasks/logline.py),
so a rule never fires on a service's own name in that header. A rule matches
when every field under ``match`` matches (a list of patterns means any of them) and no
field under ``unless`` does; a missing field (no service, no such label) matches nothing.
Patterns are RE2 (google-re2), searched anywhere in the field: matching takes linear time,
so no pattern can hang a worker. Look-arounds and back-references are refused.

How a user file combines with the built-in rules (``erdu_tasks/defaults/rules.yaml``):

- user rules are evaluated first, in file order, then the built-in rules;
- a user rule with the name of a built-in rule replaces it; ``disable`` drops built-in rules;
  ``defaults: false`` drops them all; the user's ``default_severity`` wins when given;
- ``ignore``: the first matching rule that says ``ignore: true`` or ``ignore: false`` decides,
  so a user rule with ``ignore: false`` can keep events a built-in rule would drop;
- ``severity`` and ``title``: the first matching rule that gives one wins;
- ``tags``: the union over every matching rule.

An explicit severity hint on the event wins over pattern rules: a producer that says "P1"
(an Alertmanager alert, a PagerDuty event, a person) knows its service better than a
pattern guessing from words. Only a matching rule with ``force: true`` overrides the hint,
for producers known to over- or under-state. Ignore rules apply whatever the hint.

Any problem in a file (YAML syntax, an unknown key, an invalid pattern, an unknown
severity, a duplicate name) raises ConfigError naming the file, the rule and its line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import re2
import yaml

from erdu_tasks.errors import ConfigError
from erdu_tasks.logline import message_of
from erdu_tasks.model import Event, Severity

BUILTIN_ORIGIN = "built-in rules (erdu_tasks/defaults/rules.yaml)"
BUILTIN_FILE = "erdu_tasks/defaults/rules.yaml"
"""How `erdu rules ls` names the built-in rule file (its path in the package)."""
MAX_PATTERN_CHARS = 4096
_PLAIN_FIELDS = ("message", "source", "service", "host")
_LABEL_FIELD = re.compile(r"^labels\.[A-Za-z0-9_.\-/]+$")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_RULE_KEYS = {"name", "match", "unless", "case_sensitive", "ignore", "severity", "force", "tags", "title"}
_TOP_KEYS = {"version", "defaults", "disable", "default_severity", "rules"}
_BUILTIN_ONLY_KEYS = {"defaults", "disable"}


@dataclass(frozen=True)
class Classification:
    """What the rules say about one event."""

    ignore: bool
    severity: Severity
    tags: tuple[str, ...]
    title: str | None = None
    rule_names: tuple[str, ...] = ()


Condition = tuple[tuple[str, tuple[Any, ...]], ...]
"""(field, compiled patterns) pairs; every field must match one of its patterns."""


@dataclass(frozen=True)
class Rule:
    """One compiled rule."""

    name: str
    match: Condition
    unless: Condition = ()
    ignore: bool | None = None
    severity: Severity | None = None
    force: bool = False
    tags: tuple[str, ...] = ()
    title: str | None = None
    file: str = ""
    """The rule file it comes from (the built-in rules: their path in the package)."""
    line: int | None = None
    summary: str = ""
    """What it matches and does, in one line (for `erdu rules ls`)."""

    def effect(self) -> str:
        """What the rule does to a matching event."""
        parts = []
        if self.ignore:
            parts.append("ignore")
        if self.severity is not None:
            parts.append(f"{'force ' if self.force else ''}{self.severity.value}")
        if self.tags:
            parts.append("tags " + ", ".join(self.tags))
        if self.title:
            parts.append(f"title {self.title!r}")
        return "; ".join(parts)

    def test(self, event: Event) -> dict[str, str] | None:
        """The named groups captured when the rule matches the event, else None."""
        groups: dict[str, str] = {}
        for field, patterns in self.match:
            value = _field(event, field)
            if value is None:
                return None
            for pattern in patterns:
                found = pattern.search(value)
                if found is not None:
                    groups.update({k: v for k, v in found.groupdict().items() if v is not None})
                    break
            else:
                return None
        for field, patterns in self.unless:
            value = _field(event, field)
            if value is not None and any(p.search(value) is not None for p in patterns):
                return None
        return groups

    def render_title(self, event: Event, groups: Mapping[str, str]) -> str:
        """The rule's title with its placeholders filled from the event (as plain text)."""
        values = {"service": event.service, "host": event.host, "source": event.source, **groups}
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1)) or "unknown", self.title or "")


class RuleSet:
    """An ordered list of compiled rules and the severity used when none applies."""

    def __init__(self, rules: list[Rule], default_severity: Severity = Severity.P3) -> None:
        self.rules = tuple(rules)
        self.default_severity = default_severity

    @classmethod
    def load(cls, user_file: Path | None = None) -> "RuleSet":
        """The built-in rules, combined with the user's rule file when one is given."""
        builtin_text = resources.files("erdu_tasks").joinpath("defaults/rules.yaml").read_text("utf-8")
        builtin = _parse(builtin_text, BUILTIN_ORIGIN, user=False, file=BUILTIN_FILE)
        if user_file is None:
            return cls(builtin.rules, builtin.default_severity or Severity.P3)
        path = Path(user_file)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: rules file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read rules file: {exc}") from None
        user = _parse(text, str(path), user=True)
        return cls(*_combine(builtin, user, str(path)))

    @staticmethod
    def listing(user_file: Path | None = None) -> list[tuple[Rule, str]]:
        """Every built-in and user rule, in the order they are tried, each with its state: `active`,
        `disabled` (named under the user file's `disable:`), `replaced` (a user rule has its name) or
        `off` (the user file says `defaults: false`). Raises ConfigError as load() does."""
        loaded = RuleSet.load(user_file)
        builtin_text = resources.files("erdu_tasks").joinpath("defaults/rules.yaml").read_text("utf-8")
        builtin = _parse(builtin_text, BUILTIN_ORIGIN, user=False, file=BUILTIN_FILE)
        user_rules = [r for r in loaded.rules if r.file != BUILTIN_FILE]
        user = None
        if user_file is not None:
            user = _parse(Path(user_file).read_text(encoding="utf-8"), str(user_file), user=True)
        out: list[tuple[Rule, str]] = [(r, "active") for r in user_rules]
        names = {r.name for r in user_rules}
        for rule in builtin.rules:
            match = next((r for r in loaded.rules if r.file == BUILTIN_FILE and r.name == rule.name), None)
            if match is not None:
                out.append((match, "active"))
            elif user is not None and not user.defaults:
                out.append((rule, "off"))
            elif rule.name in names:
                out.append((rule, "replaced"))
            else:
                out.append((rule, "disabled"))
        return out

    def classify(self, event: Event) -> Classification:
        """Ignore decision, severity, tags and title for one event."""
        ignore: bool | None = None
        severity: Severity | None = None
        forced = False
        title: str | None = None
        tags: list[str] = []
        names: list[str] = []
        for rule in self.rules:
            groups = rule.test(event)
            if groups is None:
                continue
            used = False
            if rule.ignore is not None and ignore is None:
                ignore, used = rule.ignore, True
                if ignore:
                    return Classification(True, severity or Severity.P5, (), None, (*names, rule.name))
            if rule.severity is not None and severity is None:
                severity, forced, used = rule.severity, rule.force, True
            if rule.title is not None and title is None:
                title, used = rule.render_title(event, groups), True
            for tag in rule.tags:
                used = True
                if tag not in tags:
                    tags.append(tag)
            if used:
                names.append(rule.name)
        if event.severity is not None and not forced:
            severity = hinted(severity, event.severity)
        return Classification(False, severity or self.default_severity, tuple(tags), title, tuple(names))


URGENT = (Severity.P1, Severity.P2)
"""Severities a producer's hint can never lower: the rules say a pattern is urgent, the producer cannot say otherwise."""


def hinted(by_rules: Severity | None, hint: Severity) -> Severity:
    """The severity with a producer's hint: it may raise what the rules say, and lower it only below P2."""
    if by_rules in URGENT and hint.rank > by_rules.rank:
        return by_rules
    return hint


# --- parsing -------------------------------------------------------------------------------


@dataclass
class _Parsed:
    rules: list[Rule]
    default_severity: Severity | None
    defaults: bool
    disable: list[str]
    disable_line: int | None


def _combine(builtin: _Parsed, user: _Parsed, origin: str) -> tuple[list[Rule], Severity]:
    """User rules first; built-ins not disabled or replaced by name after them."""
    known = {r.name for r in builtin.rules}
    unknown = [n for n in user.disable if n not in known]
    if unknown:
        where = f" (line {user.disable_line})" if user.disable_line else ""
        raise ConfigError(
            f"{origin}{where}: disable names unknown built-in rule(s) {', '.join(map(repr, unknown))}; "
            f"built-in rules are: {', '.join(sorted(known))}"
        )
    dropped = set(user.disable) | {r.name for r in user.rules}
    kept = [r for r in builtin.rules if r.name not in dropped] if user.defaults else []
    default = user.default_severity or builtin.default_severity or Severity.P3
    return [*user.rules, *kept], default


def _parse(text: str, origin: str, *, user: bool, file: str | None = None) -> _Parsed:
    """Parse and compile one rule file; ConfigError on any problem."""
    try:
        # One parse: the node tree (for line numbers) and the data built from it, as yaml.safe_load builds it.
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{origin}: YAML syntax error{where}: {problem}") from None
    lines = _Lines(root)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping with a 'rules' list at the top, got {type(data).__name__}")
    allowed = _TOP_KEYS if user else _TOP_KEYS - _BUILTIN_ONLY_KEYS
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{origin} (line {lines.top(key)}): unknown key {key!r}; "
                              f"expected one of {', '.join(sorted(allowed))}")
    if data.get("version", 1) != 1:
        raise ConfigError(f"{origin} (line {lines.top('version')}): "
                          f"unsupported version {data['version']!r} (expected 1)")
    default_severity = None
    if data.get("default_severity") is not None:
        try:
            default_severity = _severity(data["default_severity"])
        except ValueError as exc:
            raise ConfigError(f"{origin} (line {lines.top('default_severity')}): default_severity: {exc}") from None
    defaults = data.get("defaults", True)
    if not isinstance(defaults, bool):
        raise ConfigError(f"{origin} (line {lines.top('defaults')}): defaults must be true or false")
    disable = data.get("disable") or []
    if isinstance(disable, str):
        disable = [disable]
    if not isinstance(disable, list) or not all(isinstance(n, str) for n in disable):
        raise ConfigError(f"{origin} (line {lines.top('disable')}): disable must be a list of rule names")
    raw_rules = data.get("rules") or []
    if not isinstance(raw_rules, list):
        raise ConfigError(f"{origin} (line {lines.top('rules')}): rules must be a list of rules")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(raw_rules):
        rule = _compile_rule(raw, index, origin, lines)
        rule = replace(rule, file=file or origin, line=lines.rule(index), summary=_summary(raw))
        if rule.name in seen:
            raise ConfigError(f"{origin}: rule {rule.name!r} (#{index + 1}, line {lines.rule(index)}): "
                              f"duplicate name (rule #{seen[rule.name] + 1} has it too)")
        seen[rule.name] = index
        rules.append(rule)
    return _Parsed(rules, default_severity, defaults, list(disable), lines.top("disable") if disable else None)


def _compile_rule(raw: Any, index: int, origin: str, lines: "_Lines") -> Rule:
    name = raw.get("name") if isinstance(raw, dict) else None
    label = f"rule {name!r}" if isinstance(name, str) and name.strip() else "rule"

    def fail(reason: str, key: str | None = None) -> ConfigError:
        line = lines.rule(index, key)
        return ConfigError(f"{origin}: {label} (#{index + 1}, line {line or '?'}): {reason}")

    if not isinstance(raw, dict):
        raise fail(f"a rule must be a mapping, got {type(raw).__name__}")
    for key in raw:
        if key not in _RULE_KEYS:
            raise fail(f"unknown key {key!r}; expected one of {', '.join(sorted(_RULE_KEYS))}", key)
    if not isinstance(name, str) or not name.strip():
        raise fail("every rule needs a non-empty 'name'")
    case_sensitive = raw.get("case_sensitive", False)
    if not isinstance(case_sensitive, bool):
        raise fail("case_sensitive must be true or false", "case_sensitive")
    match = _condition(raw.get("match"), "match", case_sensitive, fail, required=True)
    unless = _condition(raw.get("unless"), "unless", case_sensitive, fail, required=False)

    ignore = raw.get("ignore")
    if ignore is not None and not isinstance(ignore, bool):
        raise fail("ignore must be true or false", "ignore")
    severity = None
    if raw.get("severity") is not None:
        try:
            severity = _severity(raw["severity"])
        except ValueError as exc:
            raise fail(f"severity: {exc}", "severity") from None
    force = raw.get("force", False)
    if not isinstance(force, bool):
        raise fail("force must be true or false", "force")
    if force and severity is None:
        raise fail("force: true needs a severity to force", "force")
    tags = raw.get("tags") or []
    if isinstance(tags, str):
        tags = [tags]
    if not isinstance(tags, list) or not all(isinstance(t, str) and t.strip() for t in tags):
        raise fail("tags must be a list of non-empty strings", "tags")
    title = raw.get("title")
    if title is not None:
        if not isinstance(title, str) or not title.strip():
            raise fail("title must be a non-empty string", "title")
        groups = {"service", "host", "source"}
        for _, patterns in match:
            for p in patterns:
                groups.update(p.groupindex)
        for placeholder in _PLACEHOLDER.findall(title):
            if placeholder not in groups:
                raise fail(f"title placeholder {{{placeholder}}} is neither service, host, source "
                           f"nor a named group of the match patterns", "title")
    if ignore is None and severity is None and not tags and title is None:
        raise fail("the rule does nothing: give it ignore, severity, tags or title")
    return Rule(name=name.strip(), match=match, unless=unless, ignore=ignore, severity=severity, force=force,
                tags=tuple(t.strip() for t in tags), title=title)


def _summary(raw: dict[str, Any]) -> str:
    """A rule's match and unless conditions in one line, as written."""
    def conds(value: Any) -> str:
        if not isinstance(value, dict):
            return ""
        return " and ".join(f"{k} ~ /{v}/" if not isinstance(v, list)
                            else f"{k} ~ " + " or ".join(f"/{p}/" for p in v) for k, v in value.items())
    text = conds(raw.get("match"))
    unless = conds(raw.get("unless"))
    return text + (f", unless {unless}" if unless else "")


def _condition(raw: Any, key: str, case_sensitive: bool, fail: Any, *, required: bool) -> Condition:
    if raw is None:
        if required:
            raise fail(f"every rule needs a '{key}' mapping of fields to patterns")
        return ()
    if not isinstance(raw, dict) or not raw:
        raise fail(f"{key} must be a non-empty mapping of fields to patterns", key)
    out = []
    for field, patterns in raw.items():
        if not isinstance(field, str) or not (field in _PLAIN_FIELDS or _LABEL_FIELD.match(field)):
            raise fail(f"{key}: unknown field {field!r}; expected {', '.join(_PLAIN_FIELDS)} or labels.<key>", key)
        if not isinstance(patterns, list):
            patterns = [patterns]
        if not patterns:
            raise fail(f"{key}.{field}: expected a pattern or a non-empty list of patterns", f"{key}.{field}")
        compiled = []
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise fail(f"{key}.{field}: pattern {pattern!r} must be a string (quote it)", f"{key}.{field}")
            try:
                compiled.append(compile_pattern(pattern, case_sensitive=case_sensitive))
            except ValueError as exc:
                raise fail(f"{key}.{field}: invalid pattern {pattern!r}: {exc}", f"{key}.{field}") from None
        out.append((field, tuple(compiled)))
    return tuple(out)


def compile_pattern(pattern: str, *, case_sensitive: bool = False) -> Any:
    """Compile a user pattern with RE2 (linear time); ValueError with RE2's reason if invalid."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"longer than {MAX_PATTERN_CHARS} characters")
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = case_sensitive
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        if "perl operator" in reason or "escape sequence" in reason:
            reason += " (RE2 runs in linear time, so it has no look-arounds or back-references)"
        raise ValueError(reason) from None


def _severity(value: Any) -> Severity:
    try:
        return Severity(str(value).strip().upper())
    except ValueError:
        raise ValueError(f"unknown severity {value!r}; expected one of "
                         f"{', '.join(s.value for s in Severity)}") from None


def _field(event: Event, field: str) -> str | None:
    if field.startswith("labels."):
        return event.labels.get(field[7:])
    if field == "message":   # the text after the line's header: `api[812]:` is not about an API
        return message_of(event.message)
    return getattr(event, field)


class _Lines:
    """Line numbers (1-based) of top-level keys, rules and rule keys, from the YAML node tree."""

    def __init__(self, root: Any) -> None:
        self._top: dict[str, int] = {}
        self._rules: list[tuple[int, dict[str, int]]] = []
        if not isinstance(root, yaml.MappingNode):
            return
        for key, value in root.value:
            self._top[str(key.value)] = key.start_mark.line + 1
            if key.value == "rules" and isinstance(value, yaml.SequenceNode):
                for item in value.value:
                    keys = {}
                    if isinstance(item, yaml.MappingNode):
                        for k, v in item.value:
                            keys[str(k.value)] = k.start_mark.line + 1
                            if isinstance(v, yaml.MappingNode):  # match/unless fields
                                keys.update({f"{k.value}.{f.value}": f.start_mark.line + 1 for f, _ in v.value})
                    self._rules.append((item.start_mark.line + 1, keys))

    def top(self, key: str) -> int | None:
        """Line of a top-level key."""
        return self._top.get(key)

    def rule(self, index: int, key: str | None = None) -> int | None:
        """Line of rule number index, or of one of its keys."""
        if index >= len(self._rules):
            return None
        start, keys = self._rules[index]
        return keys.get(key, start) if key else start
