"""A condition becomes an incident only after N failures in a row held for a while; then it recovers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from erdu_tasks.monitors.state import Condition, Verdict, step

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def run(seq, *, needed=1, sustained=0.0, every=10.0):
    """Feed failing/passing runs `every` seconds apart; return the verdicts."""
    cond = Condition("k")
    verdicts = []
    for i, failing in enumerate(seq):
        verdict, cond = step(cond, failing, T0 + timedelta(seconds=i * every), failures_needed=needed,
                             sustained_for=sustained)
        verdicts.append(verdict)
    return verdicts, cond


@pytest.mark.parametrize("seq, needed, expected", [
    ([True, True, True], 3, ["pending", "pending", "firing"]),
    ([True, True, False, True, True, True], 3, ["pending", "pending", "ok", "pending", "pending", "firing"]),
    ([True, False], 1, ["firing", "recovered"]),
    ([False, False], 1, ["ok", "ok"]),
    ([True, True, True, True], 2, ["pending", "firing", "firing", "firing"]),
])
def test_it_counts_consecutive_failures(seq, needed, expected):
    verdicts, _ = run(seq, needed=needed)
    assert [v.value for v in verdicts] == expected


def test_a_spike_shorter_than_sustained_for_is_not_an_incident():
    verdicts, cond = run([True, True, False, False], sustained=30, every=10)
    assert Verdict.FIRING not in verdicts and cond.breached_since is None


def test_a_breach_held_for_sustained_for_fires():
    verdicts, cond = run([True, True, True, True], sustained=30, every=10)
    assert [v.value for v in verdicts] == ["pending", "pending", "pending", "firing"]
    assert cond.breached_since == T0 and cond.firing


def test_it_recovers_once_and_counts_recoveries_when_it_flaps():
    verdicts, cond = run([True, False, False, True, False], needed=1)
    assert [v.value for v in verdicts] == ["firing", "recovered", "ok", "firing", "recovered"]
    assert cond.recoveries == 2 and not cond.firing and cond.failures == 0


def test_the_incident_id_survives_a_recovery_for_the_timeline():
    cond = Condition("k", firing=True, failures=3, incident_id="INC-1")
    verdict, after = step(cond, False, T0)
    assert verdict is Verdict.RECOVERED and after.incident_id == "INC-1"
