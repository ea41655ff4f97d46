"""Crash loops as pure decisions: restarts of one service back off (doubling), and after max_runs in the
window the circuit breaker escalates with "restarted N times, it keeps dying" instead of restarting."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from erdu_tasks.fixer.runbooks import RESTART_BACKOFF, Runbook
from erdu_tasks.model import Incident, Severity, Status
from erdu_tasks.roles.fixer import Candidate, FixContext, Outcome, backoff_delay, plan

NOW = datetime(2025, 6, 11, 10, 0, tzinfo=timezone.utc)
RESTART = Candidate("restart-api", max_runs=4, per_seconds=600, restarts=True, backoff=2.0, backoff_max=10.0)


def incident() -> Incident:
    return Incident(id="INC-20250611095900-0000abcd", fingerprint="fp-1", title="api is down",
                    description="connection refused", severity=Severity.P2, status=Status.INVESTIGATING,
                    source="probe", service="api")


def seconds_ago(*ages: float) -> tuple[datetime, ...]:
    return tuple(NOW - timedelta(seconds=a) for a in ages)


BACKOFF = [
    # (name, earlier runs (seconds ago), wait now)
    ("the first restart does not wait", (), 0.0),
    ("the second waits the back-off after the first", (0.5,), 1.5),
    ("the third waits twice that", (1.0, 30.0), 3.0),
    ("the fourth four times, capped at backoff_max", (1.0, 20.0, 40.0), 7.0),
    ("a back-off already waited out costs nothing", (9.0, 30.0), 0.0),
    ("runs outside the window do not count", (1.0, 700.0, 800.0), 1.0),
]


@pytest.mark.parametrize("name, ages, wait", BACKOFF, ids=[b[0] for b in BACKOFF])
def test_restarts_of_one_service_back_off_doubling(name, ages, wait):
    candidate = replace(RESTART, recent_runs=seconds_ago(*ages))
    assert backoff_delay(candidate, NOW) == pytest.approx(wait)
    decision = plan(incident(), FixContext(now=NOW, candidates=(candidate,)))
    assert decision.outcome is Outcome.RUN
    assert decision.delay == pytest.approx(wait)
    assert any(r.startswith("back-off:") for r in decision.reasons) is (wait > 0)


def test_after_max_runs_in_the_window_the_breaker_escalates_and_says_it_keeps_dying():
    candidate = replace(RESTART, recent_runs=seconds_ago(10, 20, 30, 40))
    decision = plan(incident(), FixContext(now=NOW, candidates=(candidate,)))
    assert decision.outcome is Outcome.ESCALATE_CRASH_LOOP and decision.escalates
    assert decision.restarts_in_window == 4
    assert "api was restarted 4 times in 600 s" in decision.reason and "keeps dying" in decision.reason
    # a runbook that does not restart gets the plain rate limit
    plain = replace(candidate, restarts=False)
    assert plan(incident(), FixContext(now=NOW, candidates=(plain,))).outcome is Outcome.ESCALATE_RATE_LIMITED
    # once the window has passed the breaker closes again
    later = plan(incident(), FixContext(now=NOW + timedelta(seconds=571), candidates=(candidate,)))
    assert later.outcome is Outcome.RUN


def test_a_restart_runbook_backs_off_by_default_and_a_runbook_can_set_its_own():
    restart = Runbook.model_validate({"name": "r", "match": {"services": ["api"]},
                                      "actions": [{"action": "restart", "params": {"supervisor": "api"}}]})
    assert restart.restarts and restart.backoff == RESTART_BACKOFF
    flush = Runbook.model_validate({"name": "f", "match": {"services": ["api"]},
                                    "actions": [{"action": "noop"}]})
    assert not flush.restarts and flush.backoff == 0.0
    own = Runbook.model_validate({"name": "o", "match": {"services": ["api"]},
                                  "actions": [{"action": "restart", "params": {"supervisor": "api"}}],
                                  "limits": {"max_runs": 5, "per_seconds": 300, "backoff": 0, "backoff_max": 5}})
    assert own.backoff == 0.0 and own.limits.backoff_max == 5


@pytest.mark.parametrize("name, ages, wait", BACKOFF, ids=[b[0] for b in BACKOFF])
def test_runs_counted_by_postgres_decide_as_the_runs_themselves(name, ages, wait):
    """The fix task loads each runbook's runs counted in its window (how many, the latest): same plan."""
    from erdu_tasks.roles.fixer import RunCount, runs_in_window

    times = seconds_ago(*ages)
    in_window = [t for t in times if t > NOW - timedelta(seconds=RESTART.per_seconds)]
    counted = RunCount(len(in_window), max(in_window) if in_window else None)
    for listed, loaded in ((replace(RESTART, recent_runs=times), replace(RESTART, runs_counted=counted)),
                           (replace(RESTART, service_restarts=times),
                            replace(RESTART, runs_counted=RunCount(0, None), restarts_counted=counted))):
        assert runs_in_window(loaded, NOW) == runs_in_window(listed, NOW)
        assert backoff_delay(loaded, NOW) == pytest.approx(backoff_delay(listed, NOW))
        assert backoff_delay(loaded, NOW) == pytest.approx(wait)
        a, b = (plan(incident(), FixContext(now=NOW, candidates=(c,))) for c in (listed, loaded))
        assert (a.outcome, a.reasons, a.delay, a.restarts_in_window) == (b.outcome, b.reasons, b.delay,
                                                                          b.restarts_in_window)
