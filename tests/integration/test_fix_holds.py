"""A fix counts only if it held, against real Postgres and real processes, through the fix stage's body
(no workers): a crash loop is not a success, and a recurrence soon after a fix marks it failed after the
fact, so learning and auto-resolution see the corrected record."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from erdu_tasks.ingest.accept import accept
from erdu_tasks.model import Event, Status
from erdu_tasks.roles import commander
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings
from erdu_tasks.store import history, incidents as store
from erdu_tasks.tasks import fix as fix_stage, pipeline

# A restart as a crash-looping service gets it: the new process comes up, then dies 0.6 s later.
CRASHY = textwrap.dedent("""
    import os, subprocess, sys
    pidfile = sys.argv[1]
    child = ("import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(0.6)")
    subprocess.Popen([sys.executable, "-c", child, pidfile], start_new_session=True)
""")


def runbooks(tmp: Path) -> Path:
    (tmp / "crashy.py").write_text(CRASHY)
    folder = tmp / "runbooks"
    folder.mkdir()
    (folder / "rb.yaml").write_text(textwrap.dedent(f"""
        runbooks:
          - name: restart-crashy
            match: {{services: [crashy]}}
            actions:
              - action: restart
                params: {{argv: ["{sys.executable}", "{tmp / 'crashy.py'}", "{tmp / 'crashy.pid'}"]}}
            validation: {{check: process, pidfile: "{tmp / 'crashy.pid'}", delay: 0.3, interval: 0.2,
                          stable_for: 1.5}}
            limits: {{max_runs: 100, per_seconds: 3600}}
          - name: flush-steady
            match: {{services: [steady]}}
            actions:
              - action: run_command
                params: {{argv: ["true"]}}
            validation: {{check: command, argv: ["true"]}}
            limits: {{max_runs: 100, per_seconds: 3600}}
    """))
    return folder


@pytest.fixture()
def rt(fresh_database_url, tmp_path):
    runtime = Runtime(load_settings(database_url=fresh_database_url, runbooks_dir=runbooks(tmp_path),
                                    reports_dir=tmp_path / "reports"))
    yield runtime
    runtime.db.close()


def open_incident(rt: Runtime, service: str) -> str:
    ids = accept(rt.db, [Event(source="api", message=f"ERROR {service} worker pool exhausted", service=service)],
                 rt).new_incidents
    assert len(ids) == 1
    with rt.db.transaction() as conn:   # the commander and the diagnostician are done with it
        conn.execute("UPDATE incidents SET status = 'investigating' WHERE id = %s", (ids[0],))
    return ids[0]


def run_fix(rt: Runtime, incident_id: str):
    """The fix stage's body as a worker runs it: plan in one transaction, act outside, settle in another."""
    with rt.db.transaction() as conn:
        outside = fix_stage.FIX_BODY(conn, rt, store.get_incident(conn, incident_id, for_update=True), "test")
    outcome = outside.act()
    with rt.db.transaction() as conn:
        outside.settle(conn, outcome)
    return outcome


def stats(rt: Runtime, incident_id: str, runbook: str) -> tuple[int, int, str] | None:
    with rt.db.transaction() as conn:
        fp = store.get_incident(conn, incident_id).fingerprint
        r = history.runbook_records(conn, fp).get(runbook)
    return (r["attempts"], r["successes"], r["last_outcome"]) if r else None


def row(rt: Runtime, sql: str, *params):
    with rt.db.transaction() as conn:
        return conn.execute(sql, params).fetchone()


def test_a_service_that_dies_after_its_restart_is_not_fixed(rt):
    incident_id = open_incident(rt, "crashy")
    outcome = run_fix(rt, incident_id)
    assert outcome["validation"]["ok"] is False
    assert "passed, then failed" in outcome["validation"]["detail"], outcome["validation"]
    assert stats(rt, incident_id, "restart-crashy") == (1, 0, "failure")
    assert row(rt, "SELECT status FROM incidents WHERE id = %s", incident_id)["status"] == "escalated"


def test_a_recurrence_soon_after_a_fix_marks_it_failed_and_auto_resolution_sees_it(rt):
    first = open_incident(rt, "steady")
    with rt.db.transaction() as conn:   # five earlier validated fixes: the pattern is one success from proven
        fp = store.get_incident(conn, first).fingerprint
        for _ in range(4):
            history.record_fix_attempt(conn, fp, "flush-steady", success=True)
    assert run_fix(rt, first)["validation"]["ok"] is True
    assert stats(rt, first, "flush-steady") == (5, 5, "success")
    assert row(rt, "SELECT status FROM incidents WHERE id = %s", first)["status"] == Status.RESOLVED.value

    second = open_incident(rt, "steady")    # seconds later, the same error again
    assert stats(rt, first, "flush-steady") == (5, 4, "failure")
    run = row(rt, "SELECT outcome, recurred_by FROM runbook_runs WHERE incident_id = %s", first)
    assert run == {"outcome": "recurred", "recurred_by": second}
    assert row(rt, "SELECT fix->'held' AS held FROM incidents WHERE id = %s", first)["held"] is False
    with rt.db.transaction() as conn:
        notes = [r["what"] for r in conn.execute("SELECT what FROM incident_timeline WHERE incident_id IN (%s, %s)"
                                                 " ORDER BY id", (first, second)).fetchall()]
    assert any(n.startswith("fix did not hold") and second in n for n in notes)
    assert any(n.startswith("recurred") and first in n for n in notes)

    with rt.db.transaction() as conn:   # learning and auto-resolution read the corrected record
        incident = store.get_incident(conn, second)
        decision = commander.assess(incident, pipeline.commander_context(conn, rt, incident))
    assert decision.decision is commander.Decision.AUTOMATE


def test_a_recurrence_after_the_window_leaves_the_fix_counted(rt):
    first = open_incident(rt, "steady")
    assert run_fix(rt, first)["validation"]["ok"] is True
    with rt.db.transaction() as conn:
        conn.execute("UPDATE runbook_runs SET hold_until = now() - interval '1 second' WHERE incident_id = %s",
                     (first,))
    open_incident(rt, "steady")
    assert stats(rt, first, "flush-steady") == (1, 1, "success")
    assert row(rt, "SELECT outcome FROM runbook_runs WHERE incident_id = %s", first)["outcome"] == "success"
