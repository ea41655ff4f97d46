"""Crash loops and quiet P1 closes against real Postgres and a real Python process, through the fix and
resolve stage bodies (no workers): the circuit breaker stops restarting and escalates with "restarted N
times, it keeps dying" and the captured state (process, thread dump, last log lines) in the escalation and
the report; a P1 closed by a runbook that only verifies tells its policy's first level as an FYI."""

from __future__ import annotations

import json
import textwrap
from datetime import datetime, timezone
from pathlib import Path

from erdu_tasks.escalation.runs import attempted_fixes
from erdu_tasks.ingest.accept import accept
from erdu_tasks.model import Event
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings
from erdu_tasks.store import incidents as store
from erdu_tasks.tasks import pipeline
from tests.integration.escalation_support import make_escalator
from tests.integration.test_capture import service  # noqa: F401 - the fixture: a live Python "orders" process
from tests.integration.test_fix_holds import run_fix


def runtime(database_url: str, tmp: Path) -> Runtime:
    folder = tmp / "runbooks"
    folder.mkdir()
    (folder / "rb.yaml").write_text(textwrap.dedent(f"""
        runbooks:
          - name: restart-orders
            match: {{services: [orders]}}
            actions:
              - action: restart
                params: {{argv: ["true"]}}
            validation: {{check: command, argv: ["true"], stable_for: 0}}
            limits: {{max_runs: 2, per_seconds: 600, backoff: 0}}
          - name: restart-billing
            match: {{services: [billing]}}
            actions:
              - action: restart
                params: {{argv: ["true"]}}
            validation: {{check: command, argv: ["true"], stable_for: 0}}
            limits: {{max_runs: 5, per_seconds: 600, backoff: 1}}
          - name: payments-verify
            match: {{services: [payments]}}
            actions:
              - action: noop
                params: {{message: "verifying"}}
            validation: {{check: command, argv: ["true"]}}
    """))
    catalog = tmp / "catalog.yaml"
    catalog.write_text(textwrap.dedent(f"""
        services:
          - name: orders
            pid_file: {tmp / 'orders.pid'}
            log_file: {tmp / 'orders.log'}
          - name: payments
          - name: billing
    """))
    escalation = {"channels": {"oncall": {"type": "file", "dir": str(tmp / "oncall")},
                               "lead": {"type": "file", "dir": str(tmp / "lead")}},
                  "policies": {"P1": [{"channels": ["oncall"], "ack_deadline": "5m"}, {"channels": ["lead"]}],
                               "default": [{"channels": ["oncall"]}]}}
    return Runtime(load_settings(database_url=database_url, runbooks_dir=folder, catalog_file=catalog,
                                 reports_dir=tmp / "reports", escalation=escalation))


def open_incident(rt: Runtime, service_name: str, message: str) -> str:
    ids = accept(rt.db, [Event(source="api", message=message, service=service_name)], rt).new_incidents
    with rt.db.transaction() as conn:
        conn.execute("UPDATE incidents SET status = 'investigating' WHERE id = %s", (ids[0],))
    return ids[0]


def resolve(rt: Runtime, incident_id: str) -> None:
    with rt.db.transaction() as conn:
        pipeline._resolve(conn, rt, store.get_incident(conn, incident_id, for_update=True), "test")


def test_the_breaker_stops_restarting_a_crash_loop_and_escalates_with_the_captured_state(
        fresh_database_url, tmp_path, service):  # noqa: F811
    rt = runtime(fresh_database_url, tmp_path)
    try:
        for n in range(2):   # two restarts of the service, each "validated", each followed by a new death
            first = open_incident(rt, "orders", f"ERROR orders worker {n} died unexpectedly")
            assert run_fix(rt, first)["validation"]["ok"] is True
            resolve(rt, first)
        third = open_incident(rt, "orders", "ERROR orders worker 3 died unexpectedly")
        with rt.db.transaction() as conn:
            conn.execute("UPDATE runbook_runs SET started_at = started_at - interval '30 seconds'")
        outside_value = run_fix(rt, third)   # the breaker: a capture, no restart
        assert outside_value.get("thread_dump") is not None
        with rt.db.transaction() as conn:
            inc = store.get_incident(conn, third, with_timeline=True)
            ran = conn.execute("SELECT count(*) AS n FROM action_runs WHERE incident_id = %s", (third,)).fetchone()
            run = conn.execute("SELECT reason FROM escalation_runs WHERE incident_id = %s", (third,)).fetchone()
        assert inc.status.value == "escalated" and ran["n"] == 0
        assert "orders was restarted 2 times in 600 s" in run["reason"] and "keeps dying" in run["reason"]
        fixes = attempted_fixes(inc)
        assert fixes[0].action.startswith("captured state before escalation (crash loop")
        assert f"process {service.pid}" in fixes[0].output and "still serving" in fixes[0].output
        assert any(f.action.startswith("captured state before the latest restart (INC-") for f in fixes)
        dumped = inc.fix["capture"]["thread_dump"]["ok"]
        assert ("serve_orders_forever" in fixes[0].output) is dumped
        with rt.db.transaction() as conn:   # the service came back on its own: the report keeps the capture
            conn.execute("UPDATE incidents SET status = 'resolved', resolved_at = now(), resolved_by = 'person:ana'"
                         " WHERE id = %s", (third,))
        resolve(rt, third)
        report = (tmp_path / "reports" / f"{third}.md").read_text()
        assert "## State before repair" in report and f"| PID | {service.pid} |" in report
        assert "## State before the latest restart (INC-" in report
        assert ("serve_orders_forever" in report) is dumped
    finally:
        rt.db.close()


def test_a_p1_closed_by_a_verify_only_runbook_tells_the_first_level_as_an_fyi(fresh_database_url, tmp_path):
    rt = runtime(fresh_database_url, tmp_path)
    try:
        quiet = open_incident(rt, "payments", "CRITICAL payments database connection failed")
        repaired = open_incident(rt, "orders", "CRITICAL orders database connection failed")
        with rt.db.transaction() as conn:
            assert store.get_incident(conn, quiet).severity.value == "P1"
        for incident_id in (quiet, repaired):
            assert run_fix(rt, incident_id)["validation"]["ok"] is True
            resolve(rt, incident_id)
        with rt.db.transaction() as conn:
            steps = conn.execute("SELECT incident_id, channels FROM escalation_steps WHERE kind = 'fyi'").fetchall()
        assert steps == [{"incident_id": quiet, "channels": ["oncall"]}]   # the real repair needs no FYI
        make_escalator(rt.db, rt.settings.escalation.model_dump(), tmp=tmp_path).sweep(datetime.now(timezone.utc))
        sent = sorted((tmp_path / "oncall").glob("*.json"))
        assert [p.name.startswith(f"{quiet}-fyi") for p in sent] == [True]
        body = json.loads(sent[0].read_text())
        assert body["kind"] == "fyi" and "payments-verify only verified" in body["reason"]
        assert not (tmp_path / "lead").exists()
        resolve(rt, quiet)   # a redelivered close does not tell them twice
        with rt.db.transaction() as conn:
            assert conn.execute("SELECT count(*) AS n FROM escalation_steps WHERE kind = 'fyi'").fetchone()["n"] == 1
    finally:
        rt.db.close()


def test_a_second_incident_of_one_outage_backs_off_and_finds_nothing_to_restart(fresh_database_url, tmp_path):
    rt = runtime(fresh_database_url, tmp_path)
    try:
        probe = open_incident(rt, "billing", "ERROR billing probe refused")
        assert run_fix(rt, probe)["actions"][0]["action"] == "restart"
        log = open_incident(rt, "billing", "ERROR billing lost its database connection")   # the same outage
        outcome = run_fix(rt, log)
        assert outcome["actions"] == [] and outcome["not_needed"] is True
        assert outcome["validation"]["detail"].startswith("already passing after the back-off, nothing run")
        with rt.db.transaction() as conn:
            inc = store.get_incident(conn, log, with_timeline=True)
            run = conn.execute("SELECT outcome, counted FROM runbook_runs WHERE incident_id = %s", (log,)).fetchone()
            stats = conn.execute("SELECT attempts FROM pattern_action_stats WHERE fingerprint = %s",
                                 (inc.fingerprint,)).fetchone()
        assert inc.status.value == "resolved" and run == {"outcome": "not_needed", "counted": False}
        assert stats is None   # nothing ran, so nothing is learned
        assert any(t.what.startswith("back-off: runbook restart-billing ran 1 time(s) on billing")
                   for t in inc.timeline)
    finally:
        rt.db.close()


def test_a_line_stamped_before_the_fix_but_read_after_it_is_no_recurrence(fresh_database_url, tmp_path):
    rt = runtime(fresh_database_url, tmp_path)
    try:
        message = "ERROR billing cache value is corrupt"
        first = open_incident(rt, "billing", message)
        before_fix = datetime.now(timezone.utc)
        assert run_fix(rt, first)["validation"]["ok"] is True
        resolve(rt, first)
        late = accept(rt.db, [Event(source="log", message=message, service="billing", occurred_at=before_fix)],
                      rt).new_incidents
        with rt.db.transaction() as conn:
            run = conn.execute("SELECT outcome FROM runbook_runs WHERE incident_id = %s", (first,)).fetchone()
        assert late and run["outcome"] == "success"   # a late line, not a fix that did not hold
        accept(rt.db, [Event(source="log", message=message, service="billing",
                             occurred_at=datetime.now(timezone.utc))], rt)   # folds into the open late one
        with rt.db.transaction() as conn:
            conn.execute("UPDATE incidents SET status = 'closed' WHERE id = %s", (late[0],))
        again = accept(rt.db, [Event(source="log", message=message, service="billing",
                                     occurred_at=datetime.now(timezone.utc))], rt).new_incidents
        with rt.db.transaction() as conn:
            run = conn.execute("SELECT outcome, recurred_by FROM runbook_runs WHERE incident_id = %s",
                               (first,)).fetchone()
        assert run == {"outcome": "recurred", "recurred_by": again[0]}   # stamped after the fix: it did not hold
    finally:
        rt.db.close()
