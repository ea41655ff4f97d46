"""The fixer's decision as a pure function: constructed incidents and facts, an injected clock, no services."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from erdu_tasks.model import Incident, Severity, Status
from erdu_tasks.roles.fixer import Candidate, FixContext, Outcome, plan, runs_in_window

NOW = datetime(2025, 6, 11, 10, 0, tzinfo=timezone.utc)
RESTART = Candidate("restart-web", max_runs=3, per_seconds=3600)
FLUSH = Candidate("flush-cache")
NEEDS_YES = Candidate("failover-db", approval_required=True)
DRY = Candidate("scale-out", dry_run=True)


def incident(**kw) -> Incident:
    base = dict(id="INC-20250611095900-0000abcd", fingerprint="fp-1", title="Web is down",
                description="connection refused", severity=Severity.P2, status=Status.INVESTIGATING,
                source="test", service="web")
    base.update(kw)
    return Incident(**base)


def ctx(*candidates: Candidate, now: datetime = NOW, **kw) -> FixContext:
    return FixContext(now=now, candidates=candidates, **kw)


def ran(minutes_ago: list[float], now: datetime = NOW) -> tuple[datetime, ...]:
    return tuple(now - timedelta(minutes=m) for m in minutes_ago)


def replace_runs(candidate: Candidate, minutes_ago: list[float]) -> Candidate:
    return replace(candidate, recent_runs=ran(minutes_ago))


CASES = [
    # (name, incident fields, context, outcome, runbook, start)
    ("the best match runs", {}, ctx(RESTART, FLUSH), Outcome.RUN, "restart-web", True),
    ("the commander's pick wins over the ranking", {"assessment": {"runbook": "flush-cache"}},
     ctx(RESTART, FLUSH), Outcome.RUN, "flush-cache", True),
    ("a pick that no longer matches falls back to the best match", {"assessment": {"runbook": "gone"}},
     ctx(RESTART), Outcome.RUN, "restart-web", True),
    ("the auto-resolution shortcut runs the proven runbook",
     {"status": Status.ASSIGNED, "auto_resolved": True, "assessment": {"runbook": "flush-cache"}},
     ctx(RESTART, FLUSH), Outcome.RUN, "flush-cache", True),
    ("a proven runbook that no longer matches sends the incident to diagnosis",
     {"status": Status.ASSIGNED, "auto_resolved": True, "assessment": {"runbook": "gone"}},
     ctx(RESTART), Outcome.DIAGNOSE_FIRST, None, False),
    ("the shortcut with nothing matching at all also diagnoses first",
     {"status": Status.ASSIGNED, "auto_resolved": True, "assessment": {"runbook": "gone"}},
     ctx(), Outcome.DIAGNOSE_FIRST, None, False),
    ("no matching runbook is a skill gap", {}, ctx(), Outcome.ESCALATE_SKILL_GAP, None, False),
    ("a started attempt whose runbook no longer matches is a skill gap",
     {"status": Status.FIXING, "fix": {"runbook": "gone", "attempt": 1}}, ctx(RESTART),
     Outcome.ESCALATE_SKILL_GAP, None, False),
    ("two runs in the hour leave room for a third", {}, ctx(replace_runs(RESTART, [10, 50])),
     Outcome.RUN, "restart-web", True),
    ("a fourth run in the hour is refused", {}, ctx(replace_runs(RESTART, [5, 20, 59])),
     Outcome.ESCALATE_RATE_LIMITED, "restart-web", False),
    ("runs older than the window do not count", {}, ctx(replace_runs(RESTART, [5, 20, 61])),
     Outcome.RUN, "restart-web", True),
    ("a run stamped in the future (clock skew) counts", {}, ctx(replace_runs(RESTART, [5, 20, -3])),
     Outcome.ESCALATE_RATE_LIMITED, "restart-web", False),
    ("a resumed attempt is not rate limited again (it was counted when it started)",
     {"status": Status.FIXING, "fix": {"runbook": "restart-web", "attempt": 1, "approved_by": "ana"}},
     ctx(replace_runs(RESTART, [5, 20, 30])), Outcome.RUN, "restart-web", False),
    ("a runbook needing approval waits for a person", {}, ctx(NEEDS_YES), Outcome.AWAIT_APPROVAL,
     "failover-db", True),
    ("the rate limit is checked before the approval wait", {},
     ctx(Candidate("failover-db", approval_required=True, max_runs=1, recent_runs=ran([1]))),
     Outcome.ESCALATE_RATE_LIMITED, "failover-db", False),
    ("an approved fix runs", {"status": Status.FIXING,
                              "fix": {"runbook": "failover-db", "attempt": 1, "approved_by": "ana"}},
     ctx(NEEDS_YES), Outcome.RUN, "failover-db", False),
    ("a silence stops the fix before anything runs", {}, ctx(RESTART, silence_id="sil-1"),
     Outcome.HOLD_SILENCED, None, False),
    ("a restart that already ran max_runs times on the service trips the crash-loop breaker", {},
     ctx(replace(RESTART, restarts=True, recent_runs=ran([1, 2, 3]))), Outcome.ESCALATE_CRASH_LOOP,
     "restart-web", False),
    ("a silence does not stop a fix already running", {"status": Status.FIXING,
                                                        "fix": {"runbook": "restart-web", "attempt": 1}},
     ctx(RESTART, silence_id="sil-1"), Outcome.RUN, "restart-web", False),
]


@pytest.mark.parametrize(("name", "fields", "context", "outcome", "runbook", "start"), CASES,
                         ids=[c[0] for c in CASES])
def test_the_fixer_plan(name, fields, context, outcome, runbook, start):
    decision = plan(incident(**fields), context)
    assert decision.outcome is outcome, decision.reasons
    assert decision.runbook == runbook
    assert decision.start is start
    assert decision.reasons and decision.reason == decision.reasons[-1]


def test_every_outcome_is_covered_by_the_table():
    assert {c[3] for c in CASES} == set(Outcome)


def test_the_clock_is_the_one_injected():
    runs = Candidate("restart-web", max_runs=1, per_seconds=600, recent_runs=(NOW,))
    assert plan(incident(), ctx(runs, now=NOW + timedelta(seconds=599))).outcome is Outcome.ESCALATE_RATE_LIMITED
    assert plan(incident(), ctx(runs, now=NOW + timedelta(seconds=600))).outcome is Outcome.RUN


def test_naive_run_times_are_taken_as_utc():
    naive = Candidate("r", max_runs=1, per_seconds=60, recent_runs=(NOW.replace(tzinfo=None) - timedelta(seconds=30),))
    assert runs_in_window(naive, NOW) == 1
    assert runs_in_window(naive, NOW + timedelta(seconds=31)) == 0


def test_starting_an_attempt_records_the_runbook_and_the_attempt_number():
    decision = plan(incident(fix={"attempt": 2, "previous": {"runbook": "restart-web"}}), ctx(RESTART))
    assert decision.outcome is Outcome.RUN and decision.attempt == 2
    assert dict(decision.fix_state) == {"attempt": 2, "previous": {"runbook": "restart-web"},
                                        "runbook": "restart-web"}
    assert decision.reason == "running runbook restart-web (attempt 2)"


def test_a_dry_run_comes_from_erdu_or_from_the_runbook():
    assert plan(incident(), ctx(RESTART)).dry_run is False
    assert plan(incident(), ctx(RESTART, dry_run=True)).dry_run is True
    assert plan(incident(), ctx(DRY)).dry_run is True
    assert plan(incident(), ctx(DRY)).reason == "dry run of runbook scale-out (attempt 1)"


def test_the_skill_gap_names_the_incident_and_its_service():
    decision = plan(incident(service=None), ctx())
    assert decision.skill_gap == "no runbook matches 'Web is down' (service -)"
    assert decision.reason == "skill gap: no runbook matches 'Web is down' (service -)"
    assert decision.escalates


def test_the_rate_limit_reason_says_how_many_runs_in_what_window_on_which_service():
    decision = plan(incident(), ctx(replace_runs(RESTART, [1, 2, 3])))
    assert decision.reason == "rate limit: runbook restart-web already ran 3 times in 3600 s on web"
    assert decision.escalates


def test_the_approval_wait_says_how_to_approve():
    decision = plan(incident(), ctx(NEEDS_YES))
    assert decision.reason == ("runbook failover-db needs approval: run "
                               "`erdu incidents approve INC-20250611095900-0000abcd`")
    assert not decision.escalates


def test_the_learned_success_rate_is_in_the_reasons():
    decision = plan(incident(), ctx(Candidate("restart-web", success_rate=0.8)))
    assert decision.reasons[0] == "runbook restart-web (learned success rate 80%)"


def test_the_plan_does_not_change_the_incident():
    inc = incident(fix={"attempt": 1})
    plan(inc, ctx(RESTART))
    assert inc.fix == {"attempt": 1} and inc.status is Status.INVESTIGATING


def test_the_fixer_role_imports_no_celery_psycopg_redis_or_httpx():
    code = ("import sys, erdu_tasks.roles.fixer; "
            "print(sorted(m for m in ('celery', 'psycopg', 'redis', 'httpx', 'kombu') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
