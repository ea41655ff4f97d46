"""The thinking roles' decisions on constructed incidents, with an injected clock; no services needed."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from erdu_tasks.brains import BrainConfig, build_brains
from erdu_tasks.brains.llm import BrainFailed
from erdu_tasks.errors import ConfigError
from erdu_tasks.store.history import LearningConfig, success_rate
from erdu_tasks.model import Incident, Severity, Status, TimelineEntry
from erdu_tasks.roles.report import build_report, render_markdown
from erdu_tasks.roles import commander, diagnostician, logwindow, resolver
from erdu_tasks.roles.commander import (
    BusinessHours,
    CommanderConfig,
    CommanderContext,
    RunbookRecord,
)

# Wednesday 2025-06-11 10:00 UTC (12:00 in Berlin); Saturday 2025-06-14 10:00 UTC.
WEDNESDAY = datetime(2025, 6, 11, 10, 0, tzinfo=timezone.utc)
SATURDAY = datetime(2025, 6, 14, 10, 0, tzinfo=timezone.utc)
BERLIN_HOURS = BusinessHours(timezone="Europe/Berlin", start="09:00", end="17:00", holidays=["2025-12-25"])


def incident(**kw) -> Incident:
    base = dict(id="INC-20250611095900-0000abcd", fingerprint="fp-1", title="Widget cache corrupted",
                description="Widget cache corrupted for shard 7", severity=Severity.P3, status=Status.DETECTED,
                source="test", service="widgets", affected_services=["widgets"], tags=[],
                template="Widget cache corrupted for shard <NUM>", occurrences=1,
                created_at=WEDNESDAY - timedelta(minutes=1))
    base.update(kw)
    return Incident(**base)


def ctx(**kw) -> CommanderContext:
    return CommanderContext(**{"now": WEDNESDAY, **kw})


HOURS = CommanderConfig(business_hours=BERLIN_HOURS)
FIX = RunbookRecord("reset-cache")

# ---- commander ----------------------------------------------------------------------------------

COMMANDER_CASES = [
    # (name, incident overrides, context overrides, severity, decision, runbook)
    ("plain P3 with a runbook is automated as classified", {}, {"runbooks": [FIX]}, "P3", "automate", "reset-cache"),
    ("no runbook: automate anyway, diagnosis records the gap", {}, {}, "P3", "automate", None),
    ("blast radius of three services raises one step",
     {"affected_services": ["widgets", "orders", "billing"]}, {"runbooks": [FIX]}, "P2", "automate", "reset-cache"),
    ("a user-facing service raises one step", {}, {"user_facing": ["widgets"], "runbooks": [FIX]}, "P2",
     "automate", "reset-cache"),
    ("a user-facing dependant raises one step", {}, {"user_facing_dependants": ["shop"], "runbooks": [FIX]}, "P2",
     "automate", "reset-cache"),
    ("two dependants raise one step", {}, {"dependants": ["a", "b"], "runbooks": [FIX]}, "P2", "automate",
     "reset-cache"),
    ("blast radius and users together raise two steps",
     {"affected_services": ["widgets", "orders", "billing"]}, {"user_facing": ["orders"], "runbooks": [FIX]},
     "P1", "automate", "reset-cache"),
    ("flapping three times raises", {}, {"recent_recurrences": 3, "runbooks": [FIX]}, "P2", "automate",
     "reset-cache"),
    ("one recurrence is only noted", {}, {"recent_recurrences": 1, "runbooks": [FIX]}, "P3", "automate",
     "reset-cache"),
    ("a storm rate raises", {"occurrences": 5000}, {"runbooks": [FIX]}, "P2", "automate", "reset-cache"),
    ("many open incidents raise a P3 (wider outage)", {}, {"open_incidents": 12, "runbooks": [FIX]}, "P2",
     "automate", "reset-cache"),
    ("many open incidents do not raise a P2", {"severity": Severity.P2}, {"open_incidents": 12, "runbooks": [FIX]},
     "P2", "automate", "reset-cache"),
    ("outside business hours an internal P3 is lowered", {}, {"now": SATURDAY, "config": HOURS, "runbooks": [FIX]},
     "P4", "automate", "reset-cache"),
    ("within business hours it is not", {}, {"config": HOURS, "runbooks": [FIX]}, "P3", "automate", "reset-cache"),
    ("outside hours but user-facing: raised, never lowered", {},
     {"now": SATURDAY, "config": HOURS, "user_facing": ["widgets"], "runbooks": [FIX]}, "P2", "automate",
     "reset-cache"),
    ("outside hours with no calendar configured: unchanged", {}, {"now": SATURDAY, "runbooks": [FIX]}, "P3",
     "automate", "reset-cache"),
    ("a holiday is outside business hours", {},
     {"now": datetime(2025, 12, 25, 10, 0, tzinfo=timezone.utc), "config": HOURS, "runbooks": [FIX]}, "P4",
     "automate", "reset-cache"),
    ("18:30 in Berlin on a weekday is outside hours (16:30 UTC)", {},
     {"now": datetime(2025, 6, 11, 16, 30, tzinfo=timezone.utc), "config": HOURS, "runbooks": [FIX]}, "P4",
     "automate", "reset-cache"),
    ("a P2 is not lowered at night (only listed severities)", {"severity": Severity.P2},
     {"now": SATURDAY, "config": HOURS, "runbooks": [FIX]}, "P2", "automate", "reset-cache"),
    ("uncovered P1 goes to people now", {"severity": Severity.P1}, {}, "P1", "escalate", None),
    ("a P2 raised to P1 by its blast radius and uncovered goes to people", {"severity": Severity.P2},
     {"user_facing": ["widgets"]}, "P1", "escalate", None),
    ("a P1 with a runbook is automated", {"severity": Severity.P1}, {"runbooks": [FIX]}, "P1", "automate",
     "reset-cache"),
    ("a P1 whose only runbook keeps failing goes to people", {"severity": Severity.P1},
     {"runbooks": [RunbookRecord("reset-cache", 6, 0, "failure")]}, "P1", "escalate", None),
    ("an uncovered P2 is automated (diagnosis records the gap)", {"severity": Severity.P2}, {}, "P2", "automate",
     None),
    ("raising a P1 stays P1", {"severity": Severity.P1}, {"user_facing": ["widgets"], "runbooks": [FIX]}, "P1",
     "automate", "reset-cache"),
    # Auto-resolution: >= 90 % over >= 5 attempts, and the latest attempt a success.
    ("5/5 proven: straight to the fix", {}, {"runbooks": [RunbookRecord("reset-cache", 5, 5, "success")]}, "P3",
     "auto_fix", "reset-cache"),
    ("4/4 is too few attempts", {}, {"runbooks": [RunbookRecord("reset-cache", 4, 4, "success")]}, "P3",
     "automate", "reset-cache"),
    ("9/10 with the latest a success is proven", {},
     {"runbooks": [RunbookRecord("reset-cache", 10, 9, "success")]}, "P3", "auto_fix", "reset-cache"),
    ("8/10 is under 90 %", {}, {"runbooks": [RunbookRecord("reset-cache", 10, 8, "success")]}, "P3", "automate",
     "reset-cache"),
    ("10/11 after a failure takes the full path (latest attempt failed)", {},
     {"runbooks": [RunbookRecord("reset-cache", 11, 10, "failure")]}, "P3", "automate", "reset-cache"),
    ("7/8 after a failure takes the full path", {}, {"runbooks": [RunbookRecord("reset-cache", 8, 7, "failure")]},
     "P3", "automate", "reset-cache"),
    ("after the failure, one more success on the full path restores it", {},
     {"runbooks": [RunbookRecord("reset-cache", 12, 11, "success")]}, "P3", "auto_fix", "reset-cache"),
    ("thresholds are configurable", {},
     {"runbooks": [RunbookRecord("reset-cache", 3, 3, "success")], "auto_min_samples": 3}, "P3", "auto_fix",
     "reset-cache"),
    ("a proven fix is used even for an uncovered-looking P1", {"severity": Severity.P1},
     {"runbooks": [RunbookRecord("reset-cache", 6, 6, "success")]}, "P1", "auto_fix", "reset-cache"),
    ("the better-proven runbook is picked, not the first", {},
     {"runbooks": [RunbookRecord("a", 1, 1, "success"), RunbookRecord("b", 50, 45, "failure")]}, "P3", "automate",
     "b"),
    ("an untried runbook keeps the engine's order", {},
     {"runbooks": [RunbookRecord("first"), RunbookRecord("second")]}, "P3", "automate", "first"),
]


@pytest.mark.parametrize("name, inc, context, severity, decision, runbook", COMMANDER_CASES,
                         ids=[c[0] for c in COMMANDER_CASES])
def test_commander_decides(name, inc, context, severity, decision, runbook):
    result = commander.assess(incident(**inc), ctx(**context))
    assert (result.severity.value, result.decision.value, result.runbook) == (severity, decision, runbook), \
        result.reasons


def test_every_severity_change_has_a_stated_reason():
    result = commander.assess(incident(affected_services=["a", "b", "c"]),
                              ctx(now=SATURDAY, config=HOURS, user_facing=["a"], recent_recurrences=4))
    moves = [f for f in result.factors if f.effect.value != "note"]
    assert [f.name for f in moves] == ["blast_radius", "user_facing"]
    assert [f.detail for f in result.factors if f.name == "flapping"][0].endswith("(already P1)")
    assert result.severity is Severity.P1 and result.original_severity is Severity.P3
    stored = result.as_dict()
    assert stored["decision"] == "escalate" and stored["facts"]["business_hours"] is False
    assert stored["factors"][1] == {"name": "blast_radius", "effect": "raise",
                                    "detail": "blast radius: 3 services affected (a, b, c)", "severity": "P2"}
    assert "escalate to people now" in stored["reasons"][-1]


def test_business_hours_calendar_reads_local_time_and_holidays():
    cal = BusinessHours(timezone="America/New_York", days=["mon", "tue", "wed", "thu", "fri"], start="09:00",
                        end="17:00", holidays=["2025-07-04"])
    assert cal.contains(datetime(2025, 6, 11, 13, 30, tzinfo=timezone.utc))        # 09:30 in New York
    assert not cal.contains(datetime(2025, 6, 11, 12, 30, tzinfo=timezone.utc))    # 08:30
    assert not cal.contains(datetime(2025, 7, 4, 15, 0, tzinfo=timezone.utc))      # a holiday
    assert not cal.contains(datetime(2025, 6, 14, 15, 0, tzinfo=timezone.utc))     # Saturday


@pytest.mark.parametrize("section, needle", [
    ({"business_hours": {"timezone": "Mars/Olympus"}}, "unknown timezone"),
    ({"business_hours": {"start": 540}}, "quote times"),
    ({"business_hours": {"start": "18:00", "end": "09:00"}}, "start before they end"),
    ({"lower_outside_hours": ["P9"]}, "lower_outside_hours"),
    ({"busy": 3}, "busy"),
])
def test_bad_commander_settings_are_refused_with_the_key(section, needle):
    with pytest.raises(ConfigError, match=needle):
        CommanderConfig.from_section(section)


def test_auto_resolution_status_explains_itself():
    assert commander.auto_resolution_status([RunbookRecord("r", 7, 7, "success")], 0.9, 5).startswith("yes, via r")
    status = commander.auto_resolution_status([RunbookRecord("r", 8, 7, "failure")], 0.9, 5)
    assert "latest attempt failed" in status and "88%" in status
    assert "2 of the 5 attempts" in commander.auto_resolution_status([RunbookRecord("r", 2, 2, "success")], 0.9, 5)


def test_success_rate_has_a_minimum_sample_rule():
    assert success_rate(4, 4, 5) is None
    assert success_rate(5, 4, 5) == 0.8
    assert success_rate(0, 0, 0) is None
    assert RunbookRecord("r", 4, 4).rate(5) is None and RunbookRecord("r", 10, 9).rate(5) == 0.9


# ---- diagnostician ------------------------------------------------------------------------------

def window(*lines: str, event: int = -1) -> logwindow.LogWindow:
    n = len(lines)
    return logwindow.LogWindow("/var/log/w.log", [logwindow.LogLine(t, i == event % n) for i, t in enumerate(lines)],
                               "message")


REL_SAME = diagnostician.Related("INC-20250601000000-00000001", "Widget cache corrupted", "closed", 1.0,
                                 "stale shard map after a deploy", same_fingerprint=True)
REL_NEAR = diagnostician.Related("INC-20250602000000-00000002", "Widget cache corrupted", "closed", 0.62,
                                 "disk full on the cache node")

DIAGNOSIS_CASES = [
    # (name, incident overrides, context, expected root cause (substring), min conf, max conf, gap?)
    ("a runbook's hint names the cause", {}, diagnostician.DiagnosticianContext(
        runbook_hints={"reset-cache": "The cache holds corrupt entries."}),
     "The cache holds corrupt entries.", 0.45, 0.55, False),
    ("a runbook that worked before makes it surer", {}, diagnostician.DiagnosticianContext(
        runbook_hints={"reset-cache": "The cache holds corrupt entries."},
        fixes=[diagnostician.FixRecord("reset-cache", 6, 6, 1.0, "success")]),
     "The cache holds corrupt entries.", 0.8, 0.9, False),
    ("no runbook: a skill gap; a tag alone is not a cause", {"tags": ["database"]},
     diagnostician.DiagnosticianContext(), "cause not yet known", 0.1, 0.2, True),
    ("the same pattern's earlier root cause", {}, diagnostician.DiagnosticianContext(related=[REL_SAME]),
     "stale shard map", 0.75, 0.85, True),
    ("a log signature next to the event", {}, diagnostician.DiagnosticianContext(
        log=window("INFO start", "ERROR write failed: No space left on device", "ERROR Widget cache corrupted")),
     "the disk is full", 0.35, 0.45, True),
    ("nothing known", {}, diagnostician.DiagnosticianContext(), "cause not yet known", 0.1, 0.2, True),
]


@pytest.mark.parametrize("name, inc, context, cause, low, high, gap", DIAGNOSIS_CASES,
                         ids=[c[0] for c in DIAGNOSIS_CASES])
def test_diagnostician_states_a_cause_with_evidence(name, inc, context, cause, low, high, gap):
    result = diagnostician.diagnose(incident(**inc), context)
    assert cause in result.root_cause
    assert low <= result.confidence <= high, result
    assert bool(result.skill_gaps) is gap
    assert result.evidence and all(isinstance(e, str) for e in result.evidence)
    assert result.established is ("not yet known" not in cause)


def test_independent_sources_naming_one_cause_corroborate_it():
    hint = "disk full on the cache node"
    alone = diagnostician.diagnose(incident(), diagnostician.DiagnosticianContext(related=[REL_NEAR]))
    both = diagnostician.diagnose(incident(), diagnostician.DiagnosticianContext(
        related=[REL_NEAR], runbook_hints={"free-disk": hint}))
    assert alone.root_cause == both.root_cause == hint
    assert both.confidence > alone.confidence
    assert any("INC-20250602000000-00000002" in e and "0.62" in e for e in both.evidence)


def test_the_diagnosis_keeps_related_incidents_history_fixes_and_log_lines():
    context = diagnostician.DiagnosticianContext(
        related=[REL_SAME, REL_NEAR],
        pattern=diagnostician.PatternHistory(incidents=7, occurrences=9, resolved=6, escalated=1,
                                             auto_resolved=1, mean_time_to_resolve=3.5),
        fixes=[diagnostician.FixRecord("reset-cache", 6, 6, 1.0, "success")],
        log=window("a", "b", "Widget cache corrupted"),
        runbook_hints={"reset-cache": "The cache holds corrupt entries."})
    result = diagnostician.diagnose(incident(), context).as_dict()
    assert [r["id"] for r in result["related"]] == [REL_SAME.id, REL_NEAR.id]
    assert result["pattern"]["mean_time_to_resolve"] == 3.5
    assert any("fixes that worked before: reset-cache 6/6" in e for e in result["evidence"])
    assert any("7 incidents, 6 resolved, 1 escalated, 1 auto-resolved" in e for e in result["evidence"])
    assert result["log"]["lines"][-1] == {"text": "Widget cache corrupted", "event": True}
    assert result["alternatives"] and result["confidence"] <= 0.95


def test_every_matching_runbook_failing_is_a_skill_gap():
    result = diagnostician.diagnose(incident(), diagnostician.DiagnosticianContext(
        runbook_hints={"reset-cache": "corrupt"}, fixes=[diagnostician.FixRecord("reset-cache", 6, 1, 1 / 6)]))
    assert result.skill_gaps and "reset-cache" in result.skill_gaps[0]


# ---- resolver -----------------------------------------------------------------------------------

def closed(**kw) -> Incident:
    return incident(**{"status": Status.RESOLVED, "resolved_at": WEDNESDAY + timedelta(seconds=5),
                       "created_at": WEDNESDAY, **kw})


FIXED = {"runbook": "reset-cache", "validation": {"ok": True, "detail": "check passed", "duration": 0.1},
         "actions": [{"step": "1:action:0", "action": "noop", "ok": True, "detail": "cache reset | done",
                      "duration": 0.01, "output": {"ran": True}, "reused": False}], "rollback": []}


def test_resolver_on_an_auto_resolved_incident():
    inc = closed(fix=FIXED, auto_resolved=True, resolved_by="runbook:reset-cache")
    result = resolver.resolve(inc, resolver.ResolverContext(
        now=WEDNESDAY, runbook_attempts=7, runbook_successes=7, known_root_cause="stale shard map",
        known_root_cause_from="INC-20250601000000-00000001", pattern=diagnostician.PatternHistory(incidents=7)))
    assert "auto-resolved by runbook reset-cache" in result.summary and "5.0 s" in result.summary
    assert result.root_cause == "stale shard map"
    assert any("without diagnosis" in lesson for lesson in result.lessons_learned)
    assert any("7/7" in lesson for lesson in result.lessons_learned)
    assert any("recurring pattern (7 incidents)" in f for f in result.follow_ups)


def test_resolver_on_a_person_resolved_user_facing_incident_after_a_failed_fix():
    failed = {**FIXED, "validation": {"ok": False, "detail": "still failing", "duration": 0.1}}
    inc = closed(fix=failed, resolved_by="person:ana", diagnosis={"skill_gaps": ["no runbook for X"]})
    result = resolver.resolve(inc, resolver.ResolverContext(now=WEDNESDAY, user_facing=["widgets"],
                                                            dependants=["shop"]))
    assert "resolved by ana" in result.summary
    assert "widgets" in result.impact["business"] and "widgets" in result.impact["user"]
    assert "shop" in result.impact["technical"]
    assert "review runbook reset-cache: its validation failed on" in " ".join(result.follow_ups)
    assert "write a runbook: no runbook for X" in result.follow_ups
    assert any("did not fix it" in lesson for lesson in result.lessons_learned)


def test_markdown_report_renders_every_section_and_keeps_tables_intact():
    inc = closed(fix=FIXED, auto_resolved=True, resolved_by="runbook:reset-cache", status=Status.CLOSED,
                 closed_at=WEDNESDAY + timedelta(seconds=6),
                 assessment={"decision": "auto_fix", "runbook": "reset-cache", "original_severity": "P3",
                             "reasons": ["classified P3", "proven"], "brain": {"name": "rules", "fallback": None}},
                 timeline=[TimelineEntry(WEDNESDAY + timedelta(seconds=1), "commander", "w1", "detected", "assigned",
                                         "assessed | auto"),
                           TimelineEntry(WEDNESDAY + timedelta(seconds=2), "fixer", "w2", "assigned", "fixing", "fix"),
                           TimelineEntry(WEDNESDAY + timedelta(seconds=5), "fixer", "w2", "fixing", "resolved", "ok"),
                           TimelineEntry(WEDNESDAY + timedelta(seconds=6), "resolver", "w3", "resolved", "closed",
                                         "closed")])
    resolution = resolver.resolve(inc, resolver.ResolverContext(now=WEDNESDAY, known_root_cause="stale map"))
    report = build_report(inc, resolution.as_dict(), related=[{"id": "INC-20250601000000-00000001", "status": "closed",
                                                              "score": 1.0, "title": "Widget cache corrupted",
                                                              "same_fingerprint": True, "root_cause": "stale map"}],
                          learning={"pattern": {"incidents": 7, "occurrences": 7, "resolved": 7, "escalated": 0,
                                                "auto_resolved": 1, "mean_time_to_resolve": 4.2},
                                    "runbooks": [{"name": "reset-cache", "attempts": 7, "successes": 7,
                                                  "success_rate": 1.0, "last_outcome": "success"}],
                                    "auto_resolution": "yes, via reset-cache"})
    assert [p["status"] for p in report["phases"]] == ["detected", "assigned", "fixing", "resolved"]
    assert [p["seconds"] for p in report["phases"]] == [1.0, 1.0, 3.0, 1.0]
    md = render_markdown(report)
    for heading in ("## Summary", "## Impact", "## Assessment", "## Root cause", "## Actions", "## Timeline",
                    "## Lessons learned", "## Follow-up tasks", "## Related incidents", "## What ERDU learned"):
        assert heading in md
    assert "auto-resolved: no diagnosis stage" in md and "stale map" in md
    assert "| 1:action:0 | noop | ok |" in md and "cache reset / done" in md   # a pipe cannot break the table
    assert "assessed / auto" in md
    assert "Runbook reset-cache: 7/7 validated successes (100%), latest success." in md


# ---- log evidence -------------------------------------------------------------------------------

EVIDENCE = logwindow.EvidenceConfig(lines_before=3, lines_after=2, max_bytes=4096)


def write_log(path: Path, n: int, event_at: int, event: str = "ERROR Widget cache corrupted for shard 7") -> Path:
    start = datetime(2025, 6, 11, 9, 0, tzinfo=timezone.utc)
    lines = [f"{(start + timedelta(seconds=i)).isoformat()} INFO line {i}" for i in range(n)]
    lines[event_at] = f"{(start + timedelta(seconds=event_at)).isoformat()} {event}"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_log_window_is_centred_on_the_event_line(tmp_path):
    log = write_log(tmp_path / "app.log", 60, 40)
    result = logwindow.read_window(str(log), message="ERROR Widget cache corrupted for shard 7", at=None,
                                   cfg=EVIDENCE, roots=[str(tmp_path)])
    assert result.found_by == "message" and result.error is None
    assert [line.text.split()[-1] for line in result.lines] == ["37", "38", "39", "7", "41", "42"]
    assert [line.event for line in result.lines] == [False, False, False, True, False, False]


def test_log_window_by_time_when_the_text_is_not_found(tmp_path):
    log = write_log(tmp_path / "app.log", 60, 40)
    at = datetime(2025, 6, 11, 9, 0, 20, tzinfo=timezone.utc)
    result = logwindow.read_window(str(log), message="something else entirely", at=at, cfg=EVIDENCE,
                                   roots=[str(tmp_path)])
    assert result.found_by == "time"
    assert [line.text for line in result.lines if line.event][0].endswith("line 20")


def test_log_window_reads_at_most_max_bytes_of_a_big_file(tmp_path):
    log = write_log(tmp_path / "big.log", 200_000, 199_990)
    assert log.stat().st_size > 5_000_000
    result = logwindow.read_window(str(log), message="Widget cache corrupted for shard 7", at=None,
                                   cfg=EVIDENCE, roots=[str(tmp_path)])
    assert result.found_by == "message" and len(result.lines) == 6
    assert sum(len(line.text) for line in result.lines) < EVIDENCE.max_bytes


def test_log_window_by_byte_offset(tmp_path):
    log = write_log(tmp_path / "app.log", 60, 40)
    offset = log.read_bytes().index(b"ERROR Widget")
    result = logwindow.read_window(str(log), message=None, at=None, cfg=EVIDENCE, roots=[str(tmp_path)],
                                   offset=offset)
    assert result.found_by == "offset" and "ERROR Widget" in [x for x in result.lines if x.event][0].text


def test_a_file_outside_the_log_roots_is_never_read(tmp_path):
    secret = tmp_path / "secret" / "key.txt"
    secret.parent.mkdir()
    secret.write_text("ERROR Widget cache corrupted\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    os.symlink(secret, logs / "app.log")
    for path in (str(secret), str(logs / "app.log"), str(logs / ".." / "secret" / "key.txt"), "relative.log"):
        result = logwindow.read_window(path, message="Widget", at=None, cfg=EVIDENCE, roots=[str(logs)])
        assert result.lines == [] and "not under a configured log root" in result.error, path
    assert logwindow.allowed(str(logs / "other.log"), [str(logs / "*.log")])
    assert not logwindow.allowed(str(logs / "app.log"), [str(logs / "*.log")])   # the symlink leads out


def test_long_lines_are_cut_and_the_path_comes_from_the_event(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("x" * 3000 + " ERROR boom happened here\n")
    result = logwindow.read_window(str(log), message="ERROR boom happened here", at=None, cfg=EVIDENCE,
                                   roots=[str(tmp_path)])
    assert len(result.lines[0].text) <= EVIDENCE.max_line_chars + 2 and result.lines[0].event
    log.write_text("y" * 9000 + " ERROR one enormous line\n")   # longer than max_bytes: its tail is kept
    result = logwindow.read_window(str(log), message="ERROR one enormous line", at=None, cfg=EVIDENCE,
                                   roots=[str(tmp_path)])
    assert len(result.lines) == 1 and result.lines[0].text.startswith("yyy")
    assert logwindow.log_path_of({"path": "/a.log"}, {"path": "/b.log"}) == "/a.log"
    assert logwindow.log_path_of({}, {"details": {"file": "/c.log"}}) == "/c.log"
    assert logwindow.monitor_paths({"logs": {"files": [{"path": "/var/log/x.log", "exclude": ["*.gz"]}]},
                                    "system": {"disks": [{"path": "/"}]}}) == ["/var/log/x.log"]


def test_learning_settings_are_validated():
    assert LearningConfig.from_section({"evidence": {"log_roots": ["/var/log"]}}).evidence.log_roots == ["/var/log"]
    with pytest.raises(ConfigError, match="auto_resolve_min_success"):
        LearningConfig.from_section({"auto_resolve_min_success": 1.5})


# ---- brains (answers checked without a network: the HTTP side is in tests/integration) ----------

class ScriptedClient:
    """Answers with a prepared object, or fails as told."""

    def __init__(self, answer):
        self.answer = answer

    def ask(self, system: str, user: str):
        assert "JSON schema" in system and "rule_based_proposal" in user
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


LLM = BrainConfig(base_url="http://127.0.0.1:9/v1", model="m")


def commander_brain(answer):
    return build_brains(LLM, ScriptedClient(answer)).commander


@pytest.mark.parametrize("answer, expect", [
    ({"severity": "P2", "decision": "automate", "reasons": ["users complain"], "runbook": "reset-cache"},
     ("llm", "P2", "automate", None, None)),
    ({"severity": "P7", "decision": "automate", "reasons": ["x"]}, ("rules", "P3", "automate", "severity", None)),
    ({"severity": "P2", "decision": "auto_fix", "reasons": ["x"]}, ("llm", "P2", "automate", None, "auto_fix")),
    ({"severity": "P2", "decision": "automate", "reasons": ["x"], "runbook": "rm-rf"},
     ("llm", "P2", "automate", None, "rm-rf")),
    ({"severity": "P2", "decision": "automate", "reasons": []}, ("rules", "P3", "automate", "reasons", None)),
    (BrainFailed("timeout: no answer within 1 s"), ("rules", "P3", "automate", "timeout", None)),
    (RuntimeError("bug"), ("rules", "P3", "automate", "internal error", None)),
])
def test_llm_commander_answers_are_used_only_when_they_fit(answer, expect):
    thought = commander_brain(answer).assess(incident(), ctx(runbooks=[FIX]))
    brain, severity, decision, reason, bounded = expect
    assert (thought.brain, thought.value.severity.value, thought.value.decision.value) == (brain, severity, decision)
    if reason is None:
        assert thought.fallback is None and "model's advice: " + answer["reasons"][0] in thought.value.reasons
        assert thought.value.runbook == "reset-cache"     # the matching runbook; "rm-rf" is refused
        refused = thought.value.advice["bounded"]
        assert (bounded is None and refused == []) or any(bounded in n for n in refused), refused
    else:
        assert reason in thought.fallback


def test_brains_are_off_unless_configured():
    assert not BrainConfig.from_section({}).active
    assert not BrainConfig.from_section({"base_url": "http://x/v1", "model": "m", "enabled": False}).active
    assert build_brains(BrainConfig()).commander.name == "rules"
    with pytest.raises(ConfigError, match="needs base_url and model"):
        BrainConfig.from_section({"enabled": True})
    with pytest.raises(ConfigError, match="base_url"):
        BrainConfig.from_section({"base_url": "file:///etc/passwd", "model": "m"})
    only = build_brains(BrainConfig(base_url="http://127.0.0.1:9/v1", model="m", roles=["resolver"]))
    assert (only.commander.name, only.diagnostician.name, only.resolver.name) == ("rules", "rules", "llm")


def test_the_report_names_the_parent_and_lists_linked_children():
    inc = closed(parent_id="INC-20250611090000-000000aa", status=Status.CLOSED)
    resolution = resolver.resolve(inc, resolver.ResolverContext(now=WEDNESDAY))
    md = render_markdown(build_report(inc, resolution.as_dict(), children=[
        {"id": "INC-20250611100001-000000bb", "status": "escalated", "severity": "P3", "service": "shop",
         "title": "Checkout | slow"}]))
    assert "| Caused by | INC-20250611090000-000000aa" in md
    assert "## Incidents linked to this one" in md and "- INC-20250611100001-000000bb (P3, escalated, shop): " \
                                                     "Checkout / slow" in md
