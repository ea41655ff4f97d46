"""The gate list: each gate's decision over facts and an injected clock, and the list's order."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from erdu_tasks.errors import ConfigError

from erdu_tasks.catalog import Catalog, Service
from erdu_tasks.escalation.gates import (
    ApprovalGate,
    Facts,
    GateName,
    InhibitionGate,
    Outcome,
    RateLimitGate,
    SilenceGate,
    build_gates,
    gates_from_settings,
)
from erdu_tasks.escalation.inhibition import DEFAULT_RULES, InhibitRule
from erdu_tasks.escalation.silences import Silence, parse_matchers
from erdu_tasks.model import Incident, Severity, Status

T0 = datetime(2025, 3, 3, 12, 0, tzinfo=timezone.utc)
CATALOG = Catalog([Service(name="db"), Service(name="api", depends_on=["db"]), Service(name="billing")])


def incident(ident: str = "INC-1", service: str = "api", severity: str = "P2", *, status=Status.DETECTED,
             parent: str | None = None, minutes: int = 0) -> Incident:
    return Incident(id=ident, fingerprint=f"fp-{ident}", title=f"{service} broken", description="",
                    severity=Severity(severity), status=status, source="test", service=service,
                    affected_services=[service], created_at=T0 + timedelta(minutes=minutes), parent_id=parent)


def silence(matcher: str, *, start: datetime = T0, hours: float = 1, ident: str = "SIL-1",
            expired_at: datetime | None = None) -> Silence:
    return Silence(ident, parse_matchers([matcher]), start, start + timedelta(hours=hours), "alice",
                   "db maintenance", expired_at=expired_at)


# --------------------------------------------------------------------------- silence


@pytest.mark.parametrize(("silences", "now", "outcome", "named"), [
    ([], T0, Outcome.PASS, None),
    ([silence("service=api")], T0, Outcome.SILENCED, "SIL-1"),
    ([silence("service=api")], T0 - timedelta(seconds=1), Outcome.PASS, None),       # a window not begun yet
    ([silence("service=api")], T0 + timedelta(hours=1), Outcome.PASS, None),         # over at its end
    ([silence("service=billing")], T0, Outcome.PASS, None),                          # does not match
    ([silence("service=api", expired_at=T0 + timedelta(minutes=5))], T0 + timedelta(minutes=5), Outcome.PASS, None),
    ([silence("service=api", ident="SIL-short", hours=1),
      silence("severity=P2", ident="SIL-long", hours=3)], T0, Outcome.SILENCED, "SIL-long"),  # the one ending last
])
def test_the_silence_gate_holds_an_incident_an_active_silence_matches(silences, now, outcome, named):
    decision = SilenceGate().check(Facts(incident=incident(), silences=silences), now)
    assert decision.gate is GateName.SILENCE
    assert (decision.outcome, decision.silence.id if decision.silence else None) == (outcome, named)
    if outcome is Outcome.SILENCED:
        assert decision.reason.startswith(f"silenced by {named}")


def test_the_silence_gate_passes_without_an_incident():
    assert SilenceGate().check(Facts(silences=[silence("service=api")]), T0).passed


# --------------------------------------------------------------------------- inhibition

DB_P1 = incident("db-p1", "db", "P1", status=Status.ESCALATED)


@pytest.mark.parametrize(("facts", "outcome", "parent", "new_link"), [
    (Facts(incident=incident(), candidates=[DB_P1]), Outcome.INHIBITED, "db-p1", True),
    (Facts(incident=incident(service="billing"), candidates=[DB_P1]), Outcome.PASS, None, False),
    (Facts(incident=incident(), candidates=[incident("db-p2", "db", "P2")]), Outcome.PASS, None, False),
    (Facts(incident=incident(), candidates=[incident("db-x", "db", "P1", status=Status.CLOSED)]),
     Outcome.PASS, None, False),
    # Already linked to an open parent: inhibited, nothing new to link.
    (Facts(incident=incident(parent="db-p1"), parent=DB_P1), Outcome.INHIBITED, "db-p1", False),
    # A linked parent that closed no longer inhibits.
    (Facts(incident=incident(parent="db-x"), parent=incident("db-x", "db", "P1", status=Status.CLOSED)),
     Outcome.PASS, None, False),
])
def test_the_inhibition_gate_holds_dependants_of_an_open_p1(facts, outcome, parent, new_link):
    decision = InhibitionGate(DEFAULT_RULES, CATALOG.dependants).check(facts, T0)
    assert decision.outcome is outcome
    assert (decision.parent.id if decision.parent else None) == parent
    assert (decision.rule is not None) is new_link


def test_inhibition_switched_off_only_honours_an_existing_link():
    gate = InhibitionGate((), CATALOG.dependants)
    assert gate.check(Facts(incident=incident(), candidates=[DB_P1]), T0).passed
    assert gate.check(Facts(incident=incident(parent="db-p1"), parent=DB_P1), T0).outcome is Outcome.INHIBITED


def test_an_inhibit_rule_naming_targets_holds_only_those():
    rule = InhibitRule(source_severities=[Severity.P1, Severity.P2], targets=["billing"])
    gate = InhibitionGate((rule,), CATALOG.dependants)
    parent = incident("db-p2", "db", "P2", status=Status.ESCALATED)
    assert gate.check(Facts(incident=incident(service="billing"), candidates=[parent]), T0).outcome \
        is Outcome.INHIBITED
    assert gate.check(Facts(incident=incident(service="api"), candidates=[parent]), T0).passed


# --------------------------------------------------------------------------- rate limit


@pytest.mark.parametrize(("channel", "count", "outcome"), [
    ("chat", 1, Outcome.PASS),
    ("chat", 10, Outcome.PASS),
    ("chat", 11, Outcome.RATE_LIMITED),
    ("pager", 20, Outcome.PASS),           # unlisted channels get the default of 20
    ("pager", 21, Outcome.RATE_LIMITED),
])
def test_the_rate_limit_gate_holds_what_exceeds_the_channel_limit(channel, count, outcome):
    decision = RateLimitGate({"chat": 10}).check(Facts(channel=channel, sent_in_window=count), T0)
    assert decision.outcome is outcome
    if outcome is Outcome.RATE_LIMITED:
        assert decision.reason == (f"held by the rate limit ({decision.limit}/minute; {count} this minute): "
                                   "counted in the next digest")


def test_the_rate_limit_gate_passes_what_is_not_a_notification():
    assert RateLimitGate({"chat": 0}).check(Facts(incident=incident()), T0).passed


# --------------------------------------------------------------------------- approval


@pytest.mark.parametrize(("required", "approved_by", "outcome"), [
    (False, None, Outcome.PASS),
    (True, None, Outcome.AWAITING_APPROVAL),
    (True, "person:alice", Outcome.PASS),
    (True, "", Outcome.AWAITING_APPROVAL),
])
def test_the_approval_gate_waits_for_a_persons_yes(required, approved_by, outcome):
    decision = ApprovalGate(900).check(Facts(approval_required=required, approved_by=approved_by), T0)
    assert decision.outcome is outcome
    if outcome is Outcome.AWAITING_APPROVAL:
        assert "within 900 s" in decision.reason


# --------------------------------------------------------------------------- the list


def test_the_list_is_built_once_in_one_order():
    gates = build_gates(rules=DEFAULT_RULES, dependants_of=CATALOG.dependants, rate_limits={"chat": 1})
    assert [g.name for g in gates.gates] == [GateName.SILENCE, GateName.INHIBITION, GateName.RATE_LIMIT,
                                            GateName.APPROVAL]
    assert [n.value for n in GateName] == ["silence", "inhibition", "rate_limit", "approval"]


def test_the_first_gate_that_does_not_pass_decides_and_callers_ask_a_subset():
    gates = build_gates(rules=DEFAULT_RULES, dependants_of=CATALOG.dependants)
    facts = Facts(incident=incident(), silences=[silence("service=api")], candidates=[DB_P1])
    assert gates.check(facts, T0).outcome is Outcome.SILENCED
    assert gates.check(facts, T0, (GateName.INHIBITION,)).outcome is Outcome.INHIBITED
    assert gates.check(facts, T0, (GateName.APPROVAL, GateName.RATE_LIMIT)).passed
    later = T0 + timedelta(hours=2)   # the silence is over: inhibition decides
    assert gates.check(facts, later).outcome is Outcome.INHIBITED
    passed = gates.check(Facts(incident=incident(service="billing")), T0)
    assert passed.passed and passed.gate is None


def test_gates_from_settings_read_the_escalation_section():
    settings = SimpleNamespace(escalation={"channels": {"file": {"max_per_minute": 3}}, "inhibit": []},
                               alerts_dir="alerts", approval_deadline_seconds=120.0)
    gates = gates_from_settings(settings, CATALOG)
    assert gates.inhibit_rules == ()
    assert gates.rate_limit.limit("file") == 3
    assert "within 120 s" in gates.check(Facts(approval_required=True), T0).reason


def test_bad_inhibit_rules_are_refused_naming_the_key_before_any_gate_is_built():
    settings = SimpleNamespace(escalation={"inhibit": "all"}, alerts_dir="alerts", approval_deadline_seconds=60.0)
    with pytest.raises(ConfigError, match="inhibit"):
        gates_from_settings(settings, CATALOG)


def test_without_redis_notifications_are_counted_per_channel_and_minute_in_the_process():
    from erdu_tasks.escalation.sweep import NotificationCounter

    counter = NotificationCounter(None)
    at = [T0, T0 + timedelta(seconds=30), T0 + timedelta(seconds=59), T0 + timedelta(seconds=60)]
    counts = [counter.count("a", at[0]), counter.count("a", at[1]), counter.count("b", at[1]),
              counter.count("a", at[2]), counter.count("a", at[3])]
    assert counts == [1, 2, 1, 3, 1]
    gate = RateLimitGate({"a": 2})
    assert [gate.check(Facts(channel="a", sent_in_window=n), T0).outcome for n in counts[:2] + counts[3:4]] \
        == [Outcome.PASS, Outcome.PASS, Outcome.RATE_LIMITED]
