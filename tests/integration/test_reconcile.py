"""The reconciler's query on a real Postgres: which incidents are owed a re-drive, and when."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row

from erdu_tasks.names import Stage
from erdu_tasks.store.reconcile import stuck
from tests.integration.escalation_support import new_incident

DEADLINE = 10.0


@pytest.fixture()
def conn(fresh_database_url):
    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as c:
        yield c


def stuck_for(conn, incident_id: str, *, changed_ago: float, driven_ago: float | None) -> bool:
    """Set when the status last changed and when the incident was last driven; is it claimed now?"""
    conn.execute("UPDATE incidents SET status_changed_at = now() - make_interval(secs => %s),"
                 " driven_at = now() - make_interval(secs => %s) WHERE id = %s",
                 (changed_ago, driven_ago, incident_id))
    if driven_ago is None:
        conn.execute("UPDATE incidents SET driven_at = NULL WHERE id = %s", (incident_id,))
    return incident_id in [o.incident_id for o in stuck(conn, deadline_seconds=DEADLINE)]


def test_a_stage_is_redriven_after_the_deadline_and_then_backs_off_doubling_it(conn):
    incident = new_incident(conn, service="orders")
    assert not stuck_for(conn, incident, changed_ago=5, driven_ago=None)     # within the deadline
    assert stuck_for(conn, incident, changed_ago=11, driven_ago=None)        # first re-drive
    assert not [o for o in stuck(conn, deadline_seconds=DEADLINE) if o.incident_id == incident]   # just driven
    # Re-driven once: the next one waits twice the deadline, then four times, ... up to sixteen times.
    assert not stuck_for(conn, incident, changed_ago=600, driven_ago=11)
    assert stuck_for(conn, incident, changed_ago=600, driven_ago=21)
    assert not stuck_for(conn, incident, changed_ago=600, driven_ago=39)
    assert stuck_for(conn, incident, changed_ago=600, driven_ago=41)
    for _ in range(5):
        assert stuck_for(conn, incident, changed_ago=3600, driven_ago=161)   # capped at 16 deadlines
    assert not stuck_for(conn, incident, changed_ago=3600, driven_ago=159)


def test_a_backlog_longer_than_the_deadline_is_redriven_once_per_backoff_not_every_pass(conn):
    """A pass every 3 s for 150 s over a backlog, with a 10 s deadline: 4 re-drives, not 13."""
    incident = new_incident(conn, service="queue")
    conn.execute("UPDATE incidents SET status_changed_at = now() - interval '100 seconds', driven_at = NULL"
                 " WHERE id = %s", (incident,))
    redrives = 0
    for _ in range(50):    # one pass every 3 s of simulated time: shift the last drive back by 3 s
        redrives += incident in [o.incident_id for o in stuck(conn, deadline_seconds=DEADLINE)]
        conn.execute("UPDATE incidents SET driven_at = driven_at - interval '3 seconds' WHERE id = %s", (incident,))
    assert redrives == 4   # at 0, 21, 63 and 144 s (past 2, 4 and 8 deadlines); a fixed deadline: every 12 s


def test_a_status_change_resets_the_backoff(conn):
    from erdu_tasks.model import Status
    from erdu_tasks.store.incidents import transition

    incident = new_incident(conn, service="ledger")
    conn.execute("UPDATE incidents SET redrives = 4 WHERE id = %s", (incident,))
    assert transition(conn, incident, expected=[Status.DETECTED], to=Status.ASSIGNED, actor="commander",
                      what="assessed") is not None
    assert conn.execute("SELECT redrives FROM incidents WHERE id = %s", (incident,)).fetchone()["redrives"] == 0
    assert stuck_for(conn, incident, changed_ago=11, driven_ago=None)


def test_a_status_change_starts_the_deadline_afresh_and_a_lease_holds_it_off(conn):
    incident = new_incident(conn, service="billing")
    # Driven long ago for an earlier status: the new status gets the plain deadline.
    assert not stuck_for(conn, incident, changed_ago=9, driven_ago=500)
    assert stuck_for(conn, incident, changed_ago=11, driven_ago=500)
    # A live fixer leased the incident until 30 s from now: not re-driven while the lease runs.
    assert not stuck_for(conn, incident, changed_ago=60, driven_ago=-30)


def test_final_and_parked_states_are_never_redriven(conn):
    incident = new_incident(conn, service="search")
    for status in ("closed", "escalated", "awaiting_approval"):
        conn.execute("UPDATE incidents SET status = %s WHERE id = %s", (status, incident))
        assert not stuck_for(conn, incident, changed_ago=3600, driven_ago=None), status


@pytest.mark.parametrize(("status", "auto_resolved", "stage"), [
    ("detected", False, Stage.ASSESS),
    ("assigned", False, Stage.DIAGNOSE),
    ("assigned", True, Stage.FIX),          # the auto-resolution shortcut goes straight to the proven fix
    ("investigating", False, Stage.FIX),
    ("fixing", False, Stage.FIX),
    ("resolved", False, Stage.RESOLVE),
])
def test_each_stuck_status_is_owed_the_stage_the_stage_machine_declares(conn, status, auto_resolved, stage):
    incident = new_incident(conn, service="ledger")
    conn.execute("UPDATE incidents SET status = %s, auto_resolved = %s, driven_at = NULL,"
                 " status_changed_at = now() - interval '1 minute' WHERE id = %s", (status, auto_resolved, incident))
    owed = [o for o in stuck(conn, deadline_seconds=DEADLINE) if o.incident_id == incident]
    assert [(o.status.value, o.stage) for o in owed] == [(status, stage)]
    assert isinstance(owed[0].stage, Stage)
