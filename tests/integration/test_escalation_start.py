"""The one way into escalated, against a real Postgres: every path opens the run in the same commit."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace


from erdu_tasks.escalation import runs as escalation, silences
from erdu_tasks.escalation.gates import build_gates
from erdu_tasks.escalation.start import escalate
from erdu_tasks.escalation.sweep import MISSING_RUN
from erdu_tasks.model import Status
from erdu_tasks.store import incidents as store
from erdu_tasks.store.db import Database
from erdu_tasks.names import Stage
from erdu_tasks.tasks.base import drive_stage
from erdu_tasks.tasks.pipeline import escalate_in_tx
from tests.integration.escalation_support import db, endpoints, redis_client, t0  # noqa: F401 (fixtures)
from tests.integration.escalation_support import (
    make_escalator,
    new_incident,
    rows,
    timeline_whats,
    webhook,
)



def live_runs(db: Database, incident_id: str) -> list[dict]:
    return rows(db, "SELECT * FROM escalation_runs WHERE incident_id = %s AND stopped_at IS NULL", (incident_id,))


class _Task:
    """What drive_stage needs from a Celery task: run the step (no retries here)."""

    name = "erdu.fix"

    @staticmethod
    def with_retries(fn):
        return fn()


def test_a_poisoned_stage_parked_for_a_person_opens_its_escalation_run_at_once(db, endpoints, redis_client, t0):
    with db.transaction() as conn:
        iid = new_incident(conn, service="orders-db")
        for _ in range(3):   # three starts of the fix stage that never finished: three lost workers
            store.stage_started(conn, iid, "fix")
    rt = SimpleNamespace(db=db, settings=SimpleNamespace(max_worker_crashes=3))

    def body(*_):
        raise AssertionError("a parked stage's body does not run")

    assert drive_stage(_Task(), rt, Stage.FIX, iid, body, "fixer-1") is None, "the fourth start is refused: parked"

    with db.transaction() as conn:
        incident = store.get_incident(conn, iid)
    assert incident.status is Status.ESCALATED
    runs = live_runs(db, iid)   # no sweep ran: the run was opened in the commit that parked it
    assert len(runs) == 1 and runs[0]["stage"] == "fix"
    assert "lost its worker 3 times" in runs[0]["reason"] and runs[0]["next_at"] is not None
    assert [(r["stage"], "poison protection" in r["reason"]) for r in
            rows(db, "SELECT * FROM escalations WHERE incident_id = %s", (iid,))] == [("fix", True)]
    finished = rows(db, "SELECT starts, finishes FROM stage_runs WHERE incident_id = %s AND stage = 'fix'", (iid,))
    assert finished == [{"starts": 4, "finishes": 1}], "the refused start is counted as finished"

    esc = make_escalator(db, {"channels": {"page": webhook(endpoints, "/page")}}, redis=redis_client)
    report = esc.sweep(runs[0]["next_at"])
    assert report.runs_missing == 0 and report.sent == 1, "the first sweep notifies level 1, nothing to fill in"
    assert [r.json["incident_id"] for r in endpoints.received] == [iid]


def test_escalating_twice_opens_one_run_and_a_closed_incident_is_not_escalated(db, t0):
    with db.transaction() as conn:
        iid = new_incident(conn, service="orders-db")
        incident = store.get_incident(conn, iid, for_update=True)
        assert escalate_in_tx(conn, incident, reason="runbook did not fix it", stage="fix", actor="fixer",
                              worker="fixer-1")
        again = store.get_incident(conn, iid, for_update=True)
        assert not escalate(conn, again, reason="again", stage="fix", actor="fixer", worker="fixer-1", now=t0)
    assert len(live_runs(db, iid)) == 1
    assert len(rows(db, "SELECT * FROM escalations WHERE incident_id = %s", (iid,))) == 1
    with db.transaction() as conn:
        other = new_incident(conn, service="search")
        store.transition(conn, other, expected=[Status.DETECTED], to=Status.RESOLVED, actor="test", what="ok")
        assert not escalate(conn, store.get_incident(conn, other, for_update=True), reason="late", stage="fix",
                            actor="fixer", worker=None, now=t0)
    assert live_runs(db, other) == []


def test_the_auditor_reports_an_escalated_incident_without_a_run_once_and_does_not_fill_it(db, endpoints,
                                                                                          redis_client, t0):
    with db.transaction() as conn:
        iid = new_incident(conn, service="orders-db")
        # A status change that bypasses the one way in (a hand-edited row, a bug): no run is opened.
        store.transition(conn, iid, expected=[Status.DETECTED], to=Status.ESCALATED, actor="test", what="by hand")
    esc = make_escalator(db, {"channels": {"page": webhook(endpoints, "/page")}}, redis=redis_client)
    first = esc.sweep(t0)
    assert first.runs_missing == 1
    assert live_runs(db, iid) == [] and not endpoints.received, "the gap is reported, not silently filled"
    assert sum(w.startswith(MISSING_RUN) for w in timeline_whats(db, iid)) == 1
    assert esc.sweep(t0 + timedelta(seconds=5)).runs_missing == 0, "reported once"
    assert sum(w.startswith(MISSING_RUN) for w in timeline_whats(db, iid)) == 1


def test_an_incident_escalated_while_a_silence_held_its_fix_is_notified_when_the_silence_ends(db, endpoints,
                                                                                             redis_client, t0):
    with db.transaction() as conn:
        window = silences.add_silence(conn, silences.parse_matchers(["service=orders-db"]), starts_at=t0,
                                      ends_at=t0 + timedelta(minutes=10), author="alice", comment="upgrade", now=t0)
        iid = new_incident(conn, service="orders-db")
        store.transition(conn, iid, expected=[Status.DETECTED], to=Status.ASSIGNED, actor="test", what="assessed")
        incident = store.get_incident(conn, iid, for_update=True)
        assert escalation.gate_before_fix(conn, build_gates(), incident, worker="fixer-1", now=t0)
        # Held before its fix, and then escalated anyway (an approval nobody gave, a stuck-stage sweep).
        assert escalate(conn, incident, reason="no approval within 3600 s", stage="fix", actor="reconciler",
                        worker=None, now=t0)
    esc = make_escalator(db, {"channels": {"page": webhook(endpoints, "/page")}}, redis=redis_client)
    esc.sweep(t0 + timedelta(seconds=1))
    assert not endpoints.received and live_runs(db, iid) == [], "silenced: the run stops, the hold stays"
    with db.transaction() as conn:
        silences.expire_silence(conn, window.id, who="alice", now=t0 + timedelta(minutes=2))
    report = esc.sweep(t0 + timedelta(minutes=2))
    assert report.runs_missing == 0
    assert len(live_runs(db, iid)) == 1, "the released hold reopens the escalated incident's run"
    assert [r.json["incident_id"] for r in endpoints.received] == [iid]
    assert f"silence {window.id} ended: escalation resumes" in timeline_whats(db, iid)
