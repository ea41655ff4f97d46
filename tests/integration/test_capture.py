"""Capture before repair, against real Postgres and a real Python process, through the fix and resolve
stage bodies (no workers): the report and the escalation payload show the process's psutil state, its
py-spy thread dump and its last log lines; what cannot be captured is recorded with the reason and the
restart goes on."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from erdu_tasks.escalation.runs import attempted_fixes
from erdu_tasks.fixer import capture
from erdu_tasks.ingest.accept import accept
from erdu_tasks.model import Event
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings
from erdu_tasks.store import incidents as store
from erdu_tasks.tasks import pipeline
from tests.conftest import wait_for
from tests.integration.test_fix_holds import run_fix

SERVICE = textwrap.dedent("""
    import os, sys, time
    open(sys.argv[1], "w").write(str(os.getpid()))
    log = open(sys.argv[2], "a")

    def serve_orders_forever():
        while True:
            log.write("INFO orders: still serving\\n"); log.flush()
            time.sleep(0.2)

    serve_orders_forever()
""")


def setup_files(tmp: Path, *, validation: str) -> tuple[Path, Path]:
    folder = tmp / "runbooks"
    folder.mkdir()
    (folder / "rb.yaml").write_text(textwrap.dedent(f"""
        runbooks:
          - name: restart-orders
            match: {{services: [orders, ghost]}}
            actions:
              - action: restart
                params: {{argv: ["true"]}}
            validation: {{check: command, argv: ["{validation}"], stable_for: 0}}
            limits: {{max_runs: 100, per_seconds: 3600}}
    """))
    catalog = tmp / "catalog.yaml"
    catalog.write_text(textwrap.dedent(f"""
        services:
          - name: orders
            pid_file: {tmp / 'orders.pid'}
            log_file: {tmp / 'orders.log'}
          - name: ghost
            process: "no-such-process-[0-9]{{8}}"
    """))
    return folder, catalog


@pytest.fixture()
def service(tmp_path):
    (tmp_path / "orders.py").write_text(SERVICE)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "orders.py"), str(tmp_path / "orders.pid"),
                             str(tmp_path / "orders.log")])
    wait_for(lambda: (tmp_path / "orders.log").exists() and (tmp_path / "orders.log").stat().st_size, 10,
             what="service up")
    yield proc
    proc.kill()
    proc.wait()


def runtime(database_url: str, tmp: Path, validation: str) -> Runtime:
    folder, catalog = setup_files(tmp, validation=validation)
    return Runtime(load_settings(database_url=database_url, runbooks_dir=folder, catalog_file=catalog,
                                 reports_dir=tmp / "reports"))


def open_incident(rt: Runtime, service: str) -> str:
    ids = accept(rt.db, [Event(source="api", message=f"ERROR {service} worker pool exhausted", service=service)],
                 rt).new_incidents
    with rt.db.transaction() as conn:
        conn.execute("UPDATE incidents SET status = 'investigating' WHERE id = %s", (ids[0],))
    return ids[0]


def incident(rt: Runtime, incident_id: str):
    with rt.db.transaction() as conn:
        return store.get_incident(conn, incident_id, with_timeline=True)


def test_the_report_shows_the_thread_dump_and_process_state_taken_before_the_restart(fresh_database_url, tmp_path,
                                                                                     service):
    rt = runtime(fresh_database_url, tmp_path, "true")
    try:
        incident_id = open_incident(rt, "orders")
        started = time.monotonic()
        outcome = run_fix(rt, incident_id)
        assert time.monotonic() - started < capture.CAPTURE_BUDGET + 2
        assert outcome["validation"]["ok"] is True
        found = incident(rt, incident_id).fix["capture"]
        assert found["process"]["pid"] == service.pid
        assert found["found_by"].startswith("pid file")
        assert found["process"]["status"] in ("sleeping", "running")
        assert found["process"]["threads"] >= 1
        assert str(tmp_path / "orders.log") in found["process"]["open_files"]
        with rt.db.transaction() as conn:
            pipeline._resolve(conn, rt, store.get_incident(conn, incident_id, for_update=True), "test")
        report = (tmp_path / "reports" / f"{incident_id}.md").read_text()
        assert "## State before repair" in report
        assert f"| PID | {service.pid} |" in report
        assert "| Threads | " in report and "| Open files | " in report
        assert "INFO orders: still serving" in report
        dump = found["thread_dump"]
        if dump["ok"]:
            assert "serve\\_orders\\_forever" in report or "serve_orders_forever" in report
            assert "Thread dump (py-spy):" in report
        else:   # py-spy without ptrace rights: the reason is on the report instead
            assert dump["reason"] and f"No thread dump: {dump['reason'][:20]}" in report
        timeline = [t.what for t in incident(rt, incident_id).timeline]
        assert any(w.startswith("captured before restart: process") for w in timeline), timeline
    finally:
        rt.db.close()


def test_a_failed_restart_escalates_with_the_capture_in_the_payload(fresh_database_url, tmp_path, service):
    rt = runtime(fresh_database_url, tmp_path, "false")
    try:
        incident_id = open_incident(rt, "orders")
        assert run_fix(rt, incident_id)["validation"]["ok"] is False
        inc = incident(rt, incident_id)
        assert inc.status.value == "escalated"
        fixes = attempted_fixes(inc)
        assert fixes[0].action == "restart-orders: captured state before restart"
        assert f"process {service.pid}" in fixes[0].output
        assert "still serving" in fixes[0].output
        if inc.fix["capture"]["thread_dump"]["ok"]:
            assert "serve_orders_forever" in fixes[0].output
        else:
            assert "no thread dump:" in fixes[0].output
    finally:
        rt.db.close()


def test_what_cannot_be_captured_is_recorded_and_the_restart_goes_on(fresh_database_url, tmp_path, service,
                                                                     monkeypatch):
    rt = runtime(fresh_database_url, tmp_path, "true")
    try:
        ghost = open_incident(rt, "ghost")
        started = time.monotonic()
        assert run_fix(rt, ghost)["actions"][0]["ok"] is True
        assert time.monotonic() - started < 3
        found = incident(rt, ghost).fix["capture"]
        assert "no process matches" in found["process_error"]
        assert found["thread_dump"] == {"ok": False, "reason": "no process to dump"}

        monkeypatch.setattr(capture, "py_spy_path", lambda: None)   # py-spy not installed
        orders = open_incident(rt, "orders")
        assert run_fix(rt, orders)["actions"][0]["ok"] is True
        found = incident(rt, orders).fix["capture"]
        assert found["process"]["pid"] == service.pid
        assert found["thread_dump"] == {"ok": False, "reason": "py-spy is not installed (pip install py-spy)"}
    finally:
        rt.db.close()


def test_a_process_that_is_not_python_gets_its_state_and_the_reason_there_is_no_dump(tmp_path):
    proc = subprocess.Popen(["sleep", "30"])
    try:
        pid_file = tmp_path / "sleep.pid"
        pid_file.write_text(str(proc.pid))
        found = capture.capture_service("sleeper", {"pid_file": str(pid_file)})
        assert found["process"]["name"] == "sleep"
        assert found["thread_dump"] == {"ok": False, "reason": "not a Python process (sleep)"}
        started = time.monotonic()
        forced = capture.capture_service("sleeper", {"pid_file": str(pid_file), "python": True})
        assert time.monotonic() - started < capture.CAPTURE_BUDGET
        assert forced["thread_dump"]["ok"] is False and forced["thread_dump"]["reason"].startswith("py-spy failed")
        assert "no thread dump: py-spy failed" in capture.summary(forced)
    finally:
        proc.kill()
        proc.wait()
