"""Postgres round trips per stage, counted from libpq's trace, for one ordinary incident through the stage
code against a real Postgres (no broker, no worker processes): a query added to a stage fails here.

Per stage: ingest 3 (the receipt with the grouping overrides; the upsert with what a new incident is owed;
the commit), commander 3 and diagnostician 3 (the start counted and committed with the locked read of the
incident; every read the stage needs; its writes with the commit), fixer 3 (the start with the locked read,
the service's lock and the plan's reads; the plan's writes with the first step's claim; the step's result with
the settle; each further step one more) and resolver 3 (the start with the locked read of the incident;
stopping the escalation with every read and the transaction's clock; the close, its learning and the commit.
The report is written before that last one, from the incident as the close leaves it, so a failure to write
it rolls the close back: test_resolver_report.py checks that the report written equals the one built from
the database after).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from types import SimpleNamespace

import psycopg
import pytest

from erdu_tasks.model import Event, Status
from erdu_tasks.names import Stage
from erdu_tasks.store import incidents as store
from erdu_tasks.store.db import Database
from erdu_tasks.tasks import fix, pipeline
from erdu_tasks.tasks.base import drive_stage
from erdu_tasks.tasks.ingest import store_events
from tests.integration.roundtrips import counting

RUNBOOK = textwrap.dedent("""
    runbooks:
      - name: reset-pool
        match: {title_pattern: "(?i)pool exhausted"}
        actions:
          - action: noop
            params: {message: "pool reset"}
        validation: {check: noop}
        limits: {max_runs: 1000, per_seconds: 3600}
      - name: drain-and-reset
        match: {title_pattern: "(?i)queue stuck"}
        actions:
          - action: noop
            params: {message: "drain"}
          - action: noop
            params: {message: "reset"}
          - action: noop
            params: {message: "resume"}
        validation: {check: noop}
        limits: {max_runs: 1000, per_seconds: 3600}
""")

LIMITS = {"ingest": 3, Stage.ASSESS: 3, Stage.DIAGNOSE: 3, Stage.FIX: 3, Stage.RESOLVE: 3}
BODIES = {Stage.ASSESS: pipeline._assess, Stage.DIAGNOSE: pipeline._diagnose, Stage.FIX: fix.FIX_BODY,
          Stage.RESOLVE: pipeline._resolve}


class _Task:
    """What drive_stage needs from a Celery task: a name and a way to run a step (no retries here)."""

    name = "erdu.test"

    @staticmethod
    def with_retries(fn):
        return fn()


@pytest.fixture()
def rt(fresh_database_url, tmp_path) -> Iterator[SimpleNamespace]:
    from erdu_tasks.runtime import Runtime
    from erdu_tasks.settings import load_settings

    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "rb.yaml").write_text(RUNBOOK)
    db = Database(fresh_database_url)
    runtime = Runtime(load_settings(reports_dir=tmp_path / "reports", runbooks_dir=tmp_path / "runbooks",
                                    alerts_dir=tmp_path / "alerts"), db=db)
    yield runtime
    db.close()


def _through_the_pipeline(rt, n: int, message: str = "connection pool exhausted on orders-{n}") -> tuple[str, dict]:
    """One incident through ingest and the four stages, each counted; the handed-on stages in order."""
    counts, handed = {}, []
    with counting(rt.db) as counts["ingest"]:
        result = store_events(rt, [Event(source="app", service=f"orders-{n}", message=message.format(n=n))],
                              f"message-{n}")
    incident_id = result.new_incidents[0]
    stage = Stage.ASSESS
    while stage is not None:
        with counting(rt.db) as counts[stage]:
            nxt = drive_stage(_Task(), rt, stage, incident_id, BODIES[stage], "test-1")
        handed.append(stage)
        stage = nxt
    assert handed == [Stage.ASSESS, Stage.DIAGNOSE, Stage.FIX, Stage.RESOLVE]
    return incident_id, counts


def test_each_stage_of_an_ordinary_incident_stays_within_its_round_trips(rt, monkeypatch):
    monkeypatch.setattr("erdu_tasks.tasks.base.hand_on", lambda *_: None)
    _through_the_pipeline(rt, 0)   # the first incident: connections opened, statements seen once
    incident_id, counts = _through_the_pipeline(rt, 1)
    with rt.db.transaction() as conn:
        incident = store.get_incident(conn, incident_id, with_timeline=True)
    assert incident.status is Status.CLOSED and incident.report_path
    assert [t.to_status for t in incident.timeline if t.to_status] == [
        "assigned", "investigating", "fixing", "resolved", "closed"]
    over = {str(stage): str(count) for stage, count in counts.items() if count.round_trips > LIMITS[stage]}
    assert not over, f"more round trips than {LIMITS}: {over}"


def test_each_further_step_of_a_fix_costs_one_round_trip_and_every_step_result_is_stored(rt, monkeypatch):
    monkeypatch.setattr("erdu_tasks.tasks.base.hand_on", lambda *_: None)
    _through_the_pipeline(rt, 0)
    incident_id, counts = _through_the_pipeline(rt, 1, "queue stuck on orders-{n}")
    assert counts[Stage.FIX].round_trips <= LIMITS[Stage.FIX] + 2, str(counts[Stage.FIX])   # three steps
    with rt.db.transaction() as conn:
        runs = conn.execute("SELECT step_key, ok, finished_at FROM action_runs WHERE incident_id = %s"
                            " ORDER BY step_key", (incident_id,)).fetchall()
    assert [(r["step_key"], r["ok"]) for r in runs] == [("1:action:0", True), ("1:action:1", True),
                                                        ("1:action:2", True)]
    assert all(r["finished_at"] is not None for r in runs)


def test_a_fix_settling_after_a_person_moved_the_incident_on_changes_only_the_step_records(rt, monkeypatch):
    """The settle of a fix that held assumes the incident is still fixing; a person who resolved it by hand
    while the step ran is not overruled: the settle finds it moved on, stores the step's result only, learns
    nothing and hands on nothing."""
    from erdu_tasks.tasks.base import Outside, WithReads

    incident_id = store_events(rt, [Event(source="app", service="orders-9",
                                          message="connection pool exhausted on orders-9")], None).new_incidents[0]
    monkeypatch.setattr("erdu_tasks.tasks.base.hand_on", lambda *_: None)
    for stage in (Stage.ASSESS, Stage.DIAGNOSE):
        drive_stage(_Task(), rt, stage, incident_id, BODIES[stage], "test-1")

    def by_hand() -> None:
        with rt.db.transaction() as conn:
            store.transition(conn, incident_id, expected=[Status.FIXING], to=Status.RESOLVED,
                             actor="person:alice", what="fixed it myself")

    def body(conn, rt_, incident, worker, facts):
        outside = fix.FIX_BODY.body(conn, rt_, incident, worker, facts)
        assert isinstance(outside, Outside)
        act = outside.act
        return Outside(act=lambda: (act(), by_hand())[0], settle=outside.settle, resettle=outside.resettle)

    handed: list[Stage] = []
    monkeypatch.setattr("erdu_tasks.tasks.base.hand_on", lambda stage, _: handed.append(stage))
    assert drive_stage(_Task(), rt, Stage.FIX, incident_id, WithReads(fix.FIX_BODY.send, body), "test-1") is None
    with rt.db.transaction() as conn:
        incident = store.get_incident(conn, incident_id, with_timeline=True)
        step = conn.execute("SELECT ok, finished_at FROM action_runs WHERE incident_id = %s", (incident_id,)).fetchone()
        learned = conn.execute("SELECT count(*) AS n FROM pattern_action_stats WHERE fingerprint = %s",
                               (incident.fingerprint,)).fetchone()["n"]
        finished = conn.execute("SELECT starts, finishes FROM stage_runs WHERE incident_id = %s AND stage = 'fix'",
                                (incident_id,)).fetchone()
    assert incident.status is Status.RESOLVED and incident.resolved_by is None and handed == []
    assert [t.actor for t in incident.timeline if t.to_status == "resolved"] == ["person:alice"]
    assert not [t for t in incident.timeline if t.actor == "fixer" and t.what.startswith("noop")]
    assert step["ok"] is True and step["finished_at"] is not None   # the step did run: that stands
    assert learned == 0                                             # but it proves nothing about the fix
    assert finished["starts"] == finished["finishes"] == 1


def test_a_failing_statement_in_a_pipelined_transaction_commits_nothing(rt):
    incident_id = store_events(rt, [Event(source="app", message="connection pool exhausted")], None).new_incidents[0]
    with pytest.raises(psycopg.errors.UndefinedTable):
        with rt.db.pipelined() as conn:
            store.add_timeline(conn, incident_id, actor="test", what="written before the failure")
            conn.execute("UPDATE no_such_table SET x = 1")   # not read: fails at the commit
            store.add_timeline(conn, incident_id, actor="test", what="written after the failure")
    with pytest.raises(RuntimeError):
        with rt.db.pipelined() as conn:
            store.add_timeline(conn, incident_id, actor="test", what="written before an exception")
            raise RuntimeError("the stage's own code failed")
    with rt.db.transaction() as conn:
        whats = [t.what for t in store.timeline(conn, incident_id)]
        assert conn.execute("SELECT 1").fetchone()   # the pool's connections are usable again
    assert not [w for w in whats if w.startswith("written")]


def test_several_timeline_lines_are_one_statement_in_their_order(rt):
    incident_id = store_events(rt, [Event(source="app", message="connection pool exhausted")], None).new_incidents[0]
    lines = [store.Line(actor="fixer", what=f"step {i}", details={"i": i}) for i in range(5)]
    with counting(rt.db) as count, rt.db.pipelined() as conn:
        store.add_timeline_lines(conn, incident_id, lines)
    assert count.statements == 3 and count.round_trips == 1   # BEGIN, the insert, COMMIT
    with rt.db.transaction() as conn:
        written = [(t.what, t.details) for t in store.timeline(conn, incident_id) if t.actor == "fixer"]
    assert written == [(f"step {i}", {"i": i}) for i in range(5)]
