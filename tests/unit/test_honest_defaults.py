"""Honest defaults: a runbook that only verifies (noop actions) never counts toward auto-resolution,
however often the error went away while it "ran"."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from erdu_tasks.fixer.runbooks import RunbookSet
from erdu_tasks.model import Incident, Severity, Status
from erdu_tasks.roles import commander
from erdu_tasks.roles.commander import CommanderContext, RunbookRecord
from erdu_tasks.roles.fixer import Candidate, FixContext, Outcome, plan

NOW = datetime(2025, 6, 11, 10, 0, tzinfo=timezone.utc)


def incident(**kw) -> Incident:
    base = dict(id="INC-20250611095900-0000abcd", fingerprint="fp-1", title="database connection failed",
                description="database connection failed", severity=Severity.P3, status=Status.DETECTED,
                source="test", service="orders", created_at=NOW)
    base.update(kw)
    return Incident(**base)


VERIFY = RunbookRecord("db-verify", 10, 10, "success", remedial=False)
RESTART = RunbookRecord("db-restart", 10, 10, "success")
RESTART_FAILED_LAST = RunbookRecord("db-restart", 10, 9, "failure")

COMMANDER_CASES = [
    # (name, runbooks, decision, runbook)
    ("a verify-only runbook 10/10 is not proven", [VERIFY], "automate", "db-verify"),
    ("a remedial runbook 10/10 is", [RESTART], "auto_fix", "db-restart"),
    ("beside a proven remedy, the verifier is never the shortcut", [VERIFY, RESTART], "auto_fix", "db-restart"),
    ("a verifier does not stand in when the remedy's latest failed", [VERIFY, RESTART_FAILED_LAST], "automate",
     None),
]


@pytest.mark.parametrize("name, runbooks, decision, runbook", COMMANDER_CASES, ids=[c[0] for c in COMMANDER_CASES])
def test_only_a_remedy_earns_auto_resolution(name, runbooks, decision, runbook):
    result = commander.assess(incident(), CommanderContext(now=NOW, runbooks=runbooks))
    assert result.decision.value == decision
    if runbook is not None:
        assert result.runbook == runbook


def test_the_report_says_why_a_verifier_never_auto_resolves():
    status = commander.auto_resolution_status([VERIFY], 0.9, 5)
    assert status.startswith("no: db-verify only verifies") and "never earns auto-resolution" in status
    assert commander.auto_resolution_status([VERIFY, RESTART], 0.9, 5).startswith("yes, via db-restart")


PLAN_CASES = [
    # (name, candidate, outcome)
    ("the shortcut never runs a verifier", Candidate("db-verify", remedial=False), Outcome.DIAGNOSE_FIRST),
    ("the shortcut runs a remedy", Candidate("db-restart"), Outcome.RUN),
]


@pytest.mark.parametrize("name, candidate, outcome", PLAN_CASES, ids=[c[0] for c in PLAN_CASES])
def test_the_fixer_sends_an_auto_resolved_incident_with_a_verifier_to_diagnosis(name, candidate, outcome):
    inc = incident(status=Status.ASSIGNED, auto_resolved=True, assessment={"runbook": candidate.name})
    decision = plan(inc, FixContext(now=NOW, candidates=(candidate,)))
    assert decision.outcome is outcome, decision.reasons
    # on the full path (diagnosed, not auto-resolved) a verifier still runs and may resolve
    full = plan(incident(status=Status.INVESTIGATING), FixContext(now=NOW, candidates=(candidate,)))
    assert full.outcome is Outcome.RUN


def test_the_shipped_database_runbook_only_verifies():
    shipped = RunbookSet.load()
    assert shipped.get("database-connectivity-verify").remedial is False
    assert shipped.get("restart-web-by-argv").remedial is True
