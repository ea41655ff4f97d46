"""Classification rules: the built-in defaults, user files, and refusing bad files clearly."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from erdu_tasks.ingest.detect import rules as rules_module
from erdu_tasks.ingest.detect.rules import Classification, RuleSet, compile_pattern
from erdu_tasks.errors import ConfigError
from erdu_tasks.model import Event, Severity


def event(message: str, **fields) -> Event:
    return Event(message=message, **fields)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def builtin() -> RuleSet:
    return RuleSet.load()


# --- the built-in rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "severity"),
    [
        ("java.lang.OutOfMemoryError: Java heap space", Severity.P1),
        ("Database connection failed: could not reach db1", Severity.P1),
        ("Authentication failed for service account", Severity.P1),
        ("Payment processor error: gateway 502", Severity.P1),
        ("Data corruption detected in segment 7", Severity.P1),
        ("Security breach suspected from 10.0.0.1", Severity.P1),
        ("Response time exceeded 2000 ms on /checkout", Severity.P2),
        ("Timeout error calling inventory", Severity.P2),
        ("Queue emails is overflowing", Severity.P2),
        ("Resource utilization high on node-3", Severity.P2),
        ("Memory usage critical: 97%", Severity.P2),
        ("ERROR could not render invoice 42", Severity.P3),
        ("something odd happened", Severity.P3),
    ],
)
def test_the_seed_patterns_set_severity(builtin, message, severity):
    verdict = builtin.classify(event(message))
    assert not verdict.ignore
    assert verdict.severity is severity


@pytest.mark.parametrize(
    "message",
    [
        "DummyErrorForAudit raised on purpose",
        "ExpectedException raised for_retry",
        "TestError: fixture blew up",
        "Health check OK",
        "HealthCheck endpoint returned 200",
        "Ping test passed",
    ],
)
def test_the_seed_noise_is_ignored(builtin, message):
    verdict = builtin.classify(event(message))
    assert verdict.ignore
    assert verdict.rule_names


def test_real_errors_that_merely_contain_test_words_are_not_ignored(builtin):
    assert not builtin.classify(event("failed to fetch latest config: error 500")).ignore
    assert not builtin.classify(event("attestation error from TPM")).ignore


def test_erdus_own_health_probes_are_never_ignored(builtin):
    verdict = builtin.classify(event("health check failed for https://api.internal/health", source="probe"))
    assert not verdict.ignore


@pytest.mark.parametrize(
    ("message", "tags"),
    [
        ("FATAL: connection to database lost", ("critical", "connectivity", "database")),
        ("slow query on orders table took 9 s", ("performance",)),
        ("HTTP 503 from api gateway", ("api",)),
        ("SQLSTATE 40001 serialization failure", ("database",)),
        ("network unreachable", ("connectivity",)),
        ("nothing special", ()),
    ],
)
def test_the_seed_tag_words(builtin, message, tags):
    assert set(builtin.classify(event(message)).tags) == set(tags)


def test_tag_words_match_words_not_fragments(builtin):
    assert "api" not in builtin.classify(event("rapid growth of the heap")).tags


def test_a_severity_hint_never_lowers_a_pattern_the_rules_call_p1_or_p2(builtin):
    verdict = builtin.classify(event("Database connection failed", severity=Severity.P4))
    assert verdict.severity is Severity.P1
    assert "database-connection-failed" in verdict.rule_names


def test_a_severity_hint_may_raise_any_pattern_and_lower_a_plain_one(builtin):
    assert builtin.classify(event("ERROR export failed", severity=Severity.P1)).severity is Severity.P1
    assert builtin.classify(event("ERROR export failed", severity=Severity.P5)).severity is Severity.P5


def test_ignore_rules_apply_even_with_a_hint(builtin):
    assert builtin.classify(event("Health check OK", severity=Severity.P1)).ignore


def test_classification_is_a_plain_value(builtin):
    verdict = builtin.classify(event("Timeout error calling inventory"))
    assert verdict == Classification(False, Severity.P2, ("performance",), None, ("timeout-error", "tag-performance"))


# --- user files ------------------------------------------------------------------------------------


def test_user_rules_come_first_and_match_every_field(tmp_path):
    path = write(tmp_path, """
        rules:
          - name: checkout-prod-down
            match:
              message: 'upstream (?P<upstream>\\w+) unavailable'
              service: '^checkout$'
              labels.env: ['prod', 'production']
            unless: {host: '^canary-'}
            severity: P1
            tags: [payments, revenue]
            title: 'Checkout cannot reach {upstream} ({service})'
    """)
    rules = RuleSet.load(path)
    hit = rules.classify(event("upstream stripe unavailable", service="checkout", labels={"env": "prod"}, host="web-1"))
    assert hit.severity is Severity.P1
    assert hit.title == "Checkout cannot reach stripe (checkout)"
    assert hit.tags[:2] == ("payments", "revenue")
    assert hit.rule_names[0] == "checkout-prod-down"
    other_service = rules.classify(event("upstream stripe unavailable", service="search", labels={"env": "prod"}))
    assert other_service.title is None and other_service.severity is Severity.P3
    assert rules.classify(event("upstream stripe unavailable", service="checkout")).title is None  # no env label
    canary = event("upstream stripe unavailable", service="checkout", labels={"env": "prod"}, host="canary-2")
    assert rules.classify(canary).title is None


def test_patterns_ignore_case_unless_the_rule_says_otherwise(tmp_path):
    path = write(tmp_path, """
        rules:
          - {name: loose, match: {message: 'disk full'}, tags: [disk]}
          - {name: strict, match: {message: 'QUOTA'}, case_sensitive: true, tags: [quota]}
    """)
    rules = RuleSet.load(path)
    assert rules.classify(event("DISK FULL on /var")).tags[0] == "disk"
    assert "quota" not in rules.classify(event("quota exceeded")).tags
    assert "quota" in rules.classify(event("QUOTA exceeded")).tags


def test_a_user_rule_can_keep_what_a_builtin_rule_ignores(tmp_path):
    path = write(tmp_path, """
        rules:
          - name: payment-health-matters
            match: {message: 'health.?check', service: '^payments$'}
            ignore: false
            severity: P2
    """)
    rules = RuleSet.load(path)
    kept = rules.classify(event("Health check failed", service="payments"))
    assert not kept.ignore and kept.severity is Severity.P2
    assert rules.classify(event("Health check failed", service="search")).ignore


def test_a_user_rule_replaces_the_builtin_rule_of_the_same_name(tmp_path):
    path = write(tmp_path, """
        rules:
          - name: authentication-failed
            match: {message: 'authentication.*failed'}
            severity: P3
    """)
    rules = RuleSet.load(path)
    assert rules.classify(event("Authentication failed for bob")).severity is Severity.P3
    assert [r.name for r in rules.rules].count("authentication-failed") == 1


def test_disable_and_defaults_false_drop_builtin_rules(tmp_path):
    path = write(tmp_path, "disable: [health-check-noise]\n")
    assert not RuleSet.load(path).classify(event("Health check OK")).ignore
    path = write(tmp_path, "defaults: false\ndefault_severity: P4\n")
    rules = RuleSet.load(path)
    assert rules.rules == ()
    assert rules.classify(event("OutOfMemoryError")).severity is Severity.P4


def test_force_lets_a_rule_override_the_producers_hint(tmp_path):
    path = write(tmp_path, """
        rules:
          - {name: noisy-cron, match: {source: '^cron$'}, severity: P5, force: true}
    """)
    rules = RuleSet.load(path)
    assert rules.classify(event("job failed", source="cron", severity=Severity.P1)).severity is Severity.P5
    assert rules.classify(event("job failed", source="api", severity=Severity.P1)).severity is Severity.P1


def test_an_empty_user_file_keeps_the_defaults(tmp_path):
    rules = RuleSet.load(write(tmp_path, "# nothing yet\n"))
    assert rules.classify(event("OutOfMemoryError")).severity is Severity.P1


def test_a_title_placeholder_is_filled_as_plain_text(tmp_path):
    path = write(tmp_path, """
        rules:
          - {name: t, match: {message: 'job (?P<job>\\S+) failed'}, title: 'Job {job} failed on {host}'}
    """)
    verdict = RuleSet.load(path).classify(event("job {service.__class__} failed"))
    assert verdict.title == "Job {service.__class__} failed on unknown"


# --- bad files are refused clearly ------------------------------------------------------------------


def refused(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        RuleSet.load(path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    message = refused(tmp_path, """
        rules:
          - name: broken
            match: {message: 'x'
            severity: P1
    """)
    assert "YAML syntax error" in message and "line " in message


def test_an_invalid_regex_names_the_rule_line_and_reason(tmp_path):
    message = refused(tmp_path, """
        rules:
          - name: fine
            match: {message: 'ok'}
            tags: [a]
          - name: bad-regex
            match: {message: 'unclosed (group'}
            severity: P2
    """)
    assert "rule 'bad-regex' (#2, line 7)" in message
    assert "invalid pattern 'unclosed (group'" in message and "missing )" in message


def test_a_pattern_re2_cannot_run_in_linear_time_is_refused(tmp_path):
    message = refused(tmp_path, """
        rules:
          - {name: backref, match: {message: '(a+)\\1'}, severity: P2}
    """)
    assert "backref" in message and "back-references" in message


def test_an_unknown_severity_is_refused(tmp_path):
    message = refused(tmp_path, """
        rules:
          - name: too-severe
            match: {message: 'x'}
            severity: P0
    """)
    assert "rule 'too-severe' (#1, line 5)" in message
    assert "unknown severity 'P0'" in message and "P1, P2, P3, P4, P5" in message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("rules:\n  - {name: a, match: {message: x}, severty: P1}\n", "unknown key 'severty'"),
        ("rules:\n  - {name: a, match: {mesage: x}, severity: P1}\n", "unknown field 'mesage'"),
        ("rules:\n  - {name: a, match: {message: x}}\n", "the rule does nothing"),
        ("rules:\n  - {match: {message: x}, severity: P1}\n", "needs a non-empty 'name'"),
        ("rules:\n  - {name: a, severity: P1}\n", "needs a 'match'"),
        ("rules:\n  - {name: a, match: {message: 5}, severity: P1}\n", "must be a string"),
        ("rules:\n  - {name: a, match: {message: x}, ignore: maybe}\n", "ignore must be true or false"),
        ("rules:\n  - {name: a, match: {message: x}, force: true, tags: [t]}\n", "needs a severity"),
        ("rules:\n  - {name: a, match: {message: x}, title: 'on {nowhere}'}\n", "placeholder {nowhere}"),
        ("rules:\n  - {name: a, match: {message: x}, tags: [t]}\n  - {name: a, match: {message: y}, tags: [u]}\n",
         "duplicate name"),
        ("rules:\n  - just a string\n", "must be a mapping"),
        ("rules: {name: a}\n", "rules must be a list"),
        ("- name: a\n", "expected a mapping"),
        ("rulez: []\n", "unknown key 'rulez'"),
        ("disable: [no-such-rule]\n", "unknown built-in rule(s) 'no-such-rule'"),
        ("default_severity: urgent\n", "unknown severity 'urgent'"),
        ("version: 2\n", "unsupported version"),
    ],
)
def test_each_bad_file_is_refused_with_its_reason(tmp_path, text, reason):
    assert reason in refused(tmp_path, text)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="rules file not found"):
        RuleSet.load(tmp_path / "nope.yaml")


# --- RE2 --------------------------------------------------------------------------------------------


def test_user_patterns_are_compiled_with_re2(tmp_path):
    rules = RuleSet.load(write(tmp_path, "rules:\n  - {name: a, match: {message: 'x'}, tags: [t]}\n"))
    pattern = rules.rules[0].match[0][1][0]
    assert type(pattern).__module__.startswith("re2")
    assert rules_module.re2 is __import__("re2")


def test_a_catastrophic_pattern_runs_in_linear_time():
    # With a backtracking engine this takes longer than the age of the universe.
    pattern = compile_pattern(r"(a+)+$")
    start = time.perf_counter()
    assert pattern.search("a" * 50_000 + "!") is None
    assert time.perf_counter() - start < 1.0
