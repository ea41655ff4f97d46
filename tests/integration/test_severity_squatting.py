"""A P1 always pages: no producer can squat on an incident with a low severity, or pre-open ERDU's own keys."""

from __future__ import annotations

from types import SimpleNamespace

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from erdu_tasks.catalog import Catalog
from erdu_tasks.errors import InvalidEvent
from erdu_tasks.escalation.runs import open_run
from erdu_tasks.ingest.accept import accept
from erdu_tasks.ingest.detect.rules import RuleSet, hinted
from erdu_tasks.ingest.formats.event import parse_events
from erdu_tasks.model import Event, Severity, Status
from erdu_tasks.names import OWN_DEDUP_NAMESPACES
from erdu_tasks.store import incidents as store
from erdu_tasks.store.db import Database

RULES = RuleSet.load(None)
P1_LINE = "Database connection failed for orders"        # the built-in rules call this P1
P3_LINE = "ERROR widget export took a wrong turn"       # a plain error: P3


@pytest.fixture()
def rt(fresh_database_url):
    db = Database(fresh_database_url)
    yield SimpleNamespace(db=db, rules=RULES, catalog=Catalog.load(None),
                          settings=SimpleNamespace(flap_window_seconds=3600.0))
    db.close()


def ev(message: str, severity: str | None = None, source: str = "app", **kw) -> Event:
    return Event(message=message, source=source, severity=Severity(severity) if severity else None,
                 service="orders", **kw)


def stored(rt, incident_id: str):
    with rt.db.transaction() as conn:
        return store.get_incident(conn, incident_id, with_timeline=True)


def test_a_low_hint_never_lowers_a_pattern_the_rules_call_p1():
    assert RULES.classify(ev(P1_LINE, "P5")).severity is Severity.P1
    assert RULES.classify(ev(P3_LINE, "P5")).severity is Severity.P5   # below P2 the producer may say less
    assert RULES.classify(ev(P3_LINE, "P1")).severity is Severity.P1   # and it may always say more


def test_the_first_low_occurrence_cannot_hold_down_the_real_p1s_that_follow(rt):
    first = accept(rt.db, [ev(P3_LINE, "P5", dedup_key="checkout")], rt).outcomes[0]
    assert stored(rt, first.incident_id).severity is Severity.P5
    accept(rt.db, [ev(P3_LINE, "P1", dedup_key="checkout")] * 3, rt)
    incident = stored(rt, first.incident_id)
    assert incident.severity is Severity.P1 and incident.occurrences == 4
    assert any("severity raised P5 -> P1" in t.what for t in incident.timeline)
    accept(rt.db, [ev(P3_LINE, "P4", dedup_key="checkout")], rt)
    assert stored(rt, first.incident_id).severity is Severity.P1   # it only rises


def test_a_rise_on_an_escalated_incident_pages_again_under_the_new_severity(rt):
    first = accept(rt.db, [ev(P3_LINE, "P5", dedup_key="nightly")], rt).outcomes[0]
    with rt.db.transaction() as conn:
        store.transition(conn, first.incident_id, expected=[Status.DETECTED], to=Status.ESCALATED, actor="test",
                         what="escalated at P5")
        open_run(conn, first.incident_id, reason="no runbook", stage="assess")
    accept(rt.db, [ev(P3_LINE, "P1", dedup_key="nightly")], rt)
    with rt.db.transaction() as conn:
        runs = conn.execute("SELECT reason, stopped_at FROM escalation_runs WHERE incident_id = %s"
                            " ORDER BY started_at", (first.incident_id,)).fetchall()
    assert len(runs) == 2 and runs[0]["stopped_at"] is not None and runs[1]["stopped_at"] is None
    assert "severity raised P5 -> P1" in runs[1]["reason"]


@pytest.mark.parametrize("namespace", OWN_DEDUP_NAMESPACES)
def test_a_producer_cannot_take_a_dedup_key_in_erdus_own_namespaces(namespace):
    with pytest.raises(InvalidEvent, match="namespace"):
        parse_events({"message": "Fake alert", "source": "alertmanager", "dedup_key": f"{namespace}abc"})
    with pytest.raises(InvalidEvent, match="namespace"):
        parse_events([{"message": "ok", "source": "x"},
                      {"message": "Fake", "source": "x", "dedup_key": f"{namespace.upper()}abc"}])
    assert parse_events({"message": "mine", "source": "x", "dedup_key": f"my-{namespace}abc"})


def test_a_pagerduty_key_and_a_producer_key_that_read_the_same_are_two_incidents(rt):
    from erdu_tasks.ingest.formats import pagerduty as pd

    trigger = pd.TriggerEvent.model_validate({"routing_key": "k", "event_action": "trigger",
                                              "payload": {"summary": "Disk full", "source": "db-1",
                                                          "severity": "critical"}})
    by_pd = accept(rt.db, [pd.trigger_event(trigger, "db-disk")], rt).outcomes[0]
    by_producer = accept(rt.db, parse_events({"message": "Disk full", "source": "cron", "severity": "P5",
                                              "dedup_key": "db-disk"}), rt).outcomes[0]
    assert by_pd.incident_id != by_producer.incident_id
    assert stored(rt, by_pd.incident_id).severity is Severity.P1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from([P1_LINE, P3_LINE, "Slow response time 5200ms from payments api"]),
                          st.sampled_from([None, "P1", "P2", "P3", "P4", "P5"]),
                          st.sampled_from(["app", "cron", "alertmanager", "pagerduty", "api"])),
                min_size=1, max_size=8))
def test_the_stored_severity_is_at_least_the_worst_the_rules_give_any_occurrence(rt, sequence):
    key = f"prop-{abs(hash(tuple(sequence)))}"
    incident_id = None
    worst = 5
    for message, hint, source in sequence:
        event = ev(message, hint, source=source, dedup_key=key)
        by_rules = RULES.classify(ev(message, source=source)).severity
        effective = RULES.classify(event).severity
        assert effective == hinted(by_rules, event.severity) if hint else effective == by_rules
        if by_rules in (Severity.P1, Severity.P2):
            assert effective.rank <= by_rules.rank
        worst = min(worst, effective.rank, by_rules.rank if by_rules.rank <= 2 else 5)
        incident_id = accept(rt.db, [event], rt).outcomes[0].incident_id   # one batch (one worker) per event
    assert stored(rt, incident_id).severity.rank <= worst
    with psycopg.connect(rt.db.url) as conn:   # each example its own incident
        conn.execute("UPDATE incidents SET status = 'closed' WHERE id = %s", (incident_id,))


# ------------------------------------------------------- a rise after the assessment re-runs it

def test_a_rise_past_the_assessment_is_reassessed_and_an_uncovered_p1_escalates_at_once(fresh_database_url,
                                                                                        tmp_path):
    """P5 first (assessed: automate, now being diagnosed), then the same error as a P1: no runbook covers
    it, and the rules escalate an uncovered P1, so the re-assessment escalates it now and opens its run."""
    from erdu_tasks.runtime import Runtime
    from erdu_tasks.settings import load_settings
    from erdu_tasks.tasks.pipeline import reassess_in_tx

    (tmp_path / "runbooks").mkdir()
    runtime = Runtime(load_settings(database_url=fresh_database_url, runbooks_dir=tmp_path / "runbooks"))
    try:
        first = accept(runtime.db, [ev(P3_LINE, "P5", dedup_key="exports")], runtime)
        iid = first.outcomes[0].incident_id
        assert first.to_reassess == []   # new: assessed by the normal path
        with runtime.db.transaction() as conn:
            conn.execute("UPDATE incidents SET status = 'investigating' WHERE id = %s", (iid,))
        same = accept(runtime.db, [ev(P3_LINE, "P5", dedup_key="exports")], runtime)
        assert same.to_reassess == []    # a repeat that raises nothing is only counted
        raised = accept(runtime.db, [ev(P3_LINE, "P1", dedup_key="exports")], runtime)
        assert raised.to_reassess == [iid]
        with runtime.db.transaction() as conn:
            incident = store.get_incident(conn, iid, for_update=True)
            assert incident.severity is Severity.P1
            assert reassess_in_tx(conn, runtime, incident, "test-worker") is True
        incident = stored(runtime, iid)
        assert incident.status is Status.ESCALATED
        with runtime.db.transaction() as conn:
            runs = conn.execute("SELECT stage, reason FROM escalation_runs WHERE incident_id = %s", (iid,)).fetchall()
        assert len(runs) == 1 and "re-assessed at P1" in runs[0]["reason"], runs
    finally:
        runtime.db.close()


def test_a_rise_on_an_incident_a_runbook_covers_is_reassessed_and_the_fix_goes_on(fresh_database_url, tmp_path):
    from erdu_tasks.runtime import Runtime
    from erdu_tasks.settings import load_settings
    from erdu_tasks.tasks.pipeline import reassess_in_tx

    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "exports.yaml").write_text(
        "runbooks:\n  - name: exports-remedy\n    match: {title_pattern: '(?i)widget export'}\n"
        "    actions: [{action: run_command, params: {argv: ['true']}}]\n    validation: {check: noop}\n")
    runtime = Runtime(load_settings(database_url=fresh_database_url, runbooks_dir=tmp_path / "runbooks"))
    try:
        iid = accept(runtime.db, [ev(P3_LINE, "P5", dedup_key="exports")], runtime).outcomes[0].incident_id
        with runtime.db.transaction() as conn:
            conn.execute("UPDATE incidents SET status = 'fixing' WHERE id = %s", (iid,))
        assert accept(runtime.db, [ev(P3_LINE, "P1", dedup_key="exports")], runtime).to_reassess == [iid]
        with runtime.db.transaction() as conn:
            assert reassess_in_tx(conn, runtime, store.get_incident(conn, iid, for_update=True), "w") is False
        incident = stored(runtime, iid)
        assert incident.status is Status.FIXING and incident.severity is Severity.P1
        assert any(t.what.startswith("re-assessed at P1: automate") for t in incident.timeline)
    finally:
        runtime.db.close()
