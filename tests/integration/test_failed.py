"""Failed stages: listed with incident, stage and error; re-driven by `erdu failed retry` once the cause is fixed."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import textwrap
import threading

import httpx
import pytest

from tests.conftest import drop_the_hand_on, free_port, incident_rows, wait_for


class CacheService:
    """A local HTTP service with /reset and /health, started only when the test 'fixes the cause'."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.resets = 0
        self.server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _ok(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n")

            def do_POST(self) -> None:  # noqa: N802
                owner.resets += 1
                self._ok()

            def do_GET(self) -> None:  # noqa: N802
                self._ok()

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def runbook(port: int) -> str:
    return textwrap.dedent(f"""
        runbooks:
          - name: reset-cache-service
            match: {{service: cache}}
            diagnosis_hint: The cache service holds stale entries; its /reset endpoint clears them.
            actions:
              - action: http_call
                params: {{method: POST, url: "http://127.0.0.1:{port}/reset"}}
                timeout: 3
            validation: {{check: http, url: "http://127.0.0.1:{port}/health", expect_status: [200]}}
            limits: {{max_runs: 10, per_seconds: 3600}}
          - name: reset-orders-pool
            match: {{service: orders}}
            actions:
              - action: noop
            validation: {{check: noop}}
            limits: {{max_runs: 10, per_seconds: 3600}}
    """)


@pytest.fixture()
def cache_service():
    service = CacheService(free_port())
    yield service
    service.stop()


@pytest.fixture()
def stack(stack_factory, tmp_path, cache_service):
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    (runbooks / "cache.yaml").write_text(runbook(cache_service.port))
    s = stack_factory({"ERDU_RUNBOOKS_DIR": str(runbooks), "COLUMNS": "250"})
    s.start_all()
    return s


def status_of(stack, incident_id):
    return incident_rows(stack.database_url, "SELECT status FROM incidents WHERE id = %s", (incident_id,))[0]["status"]


def test_a_fix_against_a_stopped_service_escalates_and_failed_retry_closes_it_once_the_service_is_back(
        stack, cache_service):
    stack.send_event({"message": "Cache returned stale entries for key user:42", "service": "cache"})
    incident = wait_for(lambda: incident_rows(stack.database_url), 30, what="an incident")[0]
    wait_for(lambda: status_of(stack, incident["id"]) == "escalated", 60, what="escalated")
    escalation = incident_rows(stack.database_url, "SELECT * FROM escalations WHERE incident_id = %s",
                               (incident["id"],))
    assert escalation[0]["stage"] == "fix" and "reset-cache-service" in escalation[0]["reason"]
    assert cache_service.resets == 0

    cache_service.start()  # fix the cause
    done = stack.erdu("failed", "retry", incident["id"])
    assert done.returncode == 0, done.stderr
    assert "re-driven from fix" in done.stdout

    wait_for(lambda: status_of(stack, incident["id"]) == "closed", 60, what="closed after retry")
    assert cache_service.resets == 1
    closed = incident_rows(stack.database_url, "SELECT * FROM incidents WHERE id = %s", (incident["id"],))[0]
    assert closed["resolved_by"] == "runbook:reset-cache-service" and closed["fix"]["attempt"] == 2
    retried = incident_rows(stack.database_url, "SELECT what FROM incident_timeline WHERE incident_id = %s"
                            " AND what LIKE 'retry from fix%%'", (incident["id"],))
    assert len(retried) == 1

    again = stack.erdu("failed", "retry", incident["id"])  # retrying a closed incident changes nothing, and says so
    assert again.returncode == 1 and "is closed: only escalated incidents are retried" in again.stderr
    assert status_of(stack, incident["id"]) == "closed" and cache_service.resets == 1


def fail_a_diagnose_task(stack) -> dict:
    """An incident whose diagnose task raised (a call with a wrong argument), recorded and escalated."""
    stack.kill("diagnostician")
    stack.send_event({"message": "Order service connection pool exhausted", "service": "orders"})
    incident = wait_for(lambda: incident_rows(stack.database_url), 30, what="an incident")[0]
    wait_for(lambda: status_of(stack, incident["id"]) == "assigned", 30, what="assigned")
    drop_the_hand_on(stack.redis_url, "diagnostician", incident["id"])   # only the failing call will run
    stack.client.send_task("erdu.diagnose", args=(incident["id"], "unexpected-extra-arg"), queue="diagnostician")
    stack.start("diagnostician")
    wait_for(lambda: status_of(stack, incident["id"]) == "escalated", 60, what="escalated by the failed task")
    return incident


@pytest.mark.slow(24)
def test_failed_ls_lists_a_stage_task_that_raised_and_retry_all_redrives_it_from_that_stage(stack):
    incident = fail_a_diagnose_task(stack)

    listed = stack.erdu("failed", "ls")
    assert listed.returncode == 0, listed.stderr
    assert incident["id"] in listed.stdout and "diagnose" in listed.stdout and "TypeError" in listed.stdout

    done = stack.erdu("failed", "retry", "--all")
    assert done.returncode == 0, done.stderr
    assert f"{incident['id']} re-driven from diagnose" in done.stdout
    wait_for(lambda: status_of(stack, incident["id"]) == "closed", 60, what="closed after retry --all")
    assert incident["id"] not in stack.erdu("failed", "ls").stdout
    assert incident["id"] in stack.erdu("failed", "ls", "--all").stdout


@pytest.fixture()
def api(stack):
    port = free_port()
    env = {k: v for k, v in stack.env.items() if k not in ("ERDU_API_TOKEN", "ERDU_API_READ_TOKEN")}
    proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", "api", "--port", str(port)], env=env,
                            cwd=stack.tmp, stdout=open(stack.tmp / "api.log", "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def up() -> bool:
        assert proc.poll() is None, (stack.tmp / "api.log").read_text()
        try:
            return client.get("/openapi.json").status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 60, 0.2, what="the API")
    yield client
    client.close()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(20)


@pytest.mark.slow(32)
def test_the_api_lists_failed_tasks_and_retries_them(stack, api):
    incident = fail_a_diagnose_task(stack)
    listed = api.get("/v1/failed-tasks").json()["failed_tasks"]
    assert [(t["incident_id"], t["stage"], t["task_name"]) for t in listed] == [
        (incident["id"], "diagnose", "erdu.diagnose")]
    assert "TypeError" in listed[0]["error"] and listed[0]["retried_at"] is None

    assert api.post("/v1/failed-tasks/retry", json={}).status_code == 422
    assert api.post("/v1/failed-tasks/retry", json={"incident_id": "INC-nope"}).status_code == 404
    done = api.post("/v1/failed-tasks/retry", json={"all": True, "by": "alice"})
    assert done.status_code == 200, done.text
    assert done.json()["results"] == [{"incident_id": incident["id"], "retried": True,
                                       "message": f"{incident['id']} re-driven from diagnose"}]
    wait_for(lambda: status_of(stack, incident["id"]) == "closed", 60, what="closed after the API retry")
    assert api.get("/v1/failed-tasks").json()["failed_tasks"] == []
    again = api.get("/v1/failed-tasks", params={"include_retried": "true"}).json()["failed_tasks"]
    assert again[0]["retried_at"] is not None
    refused = api.post("/v1/failed-tasks/retry", json={"incident_id": incident["id"]}).json()["results"]
    assert refused[0]["retried"] is False and "closed" in refused[0]["message"]
    timeline = incident_rows(stack.database_url, "SELECT actor FROM incident_timeline WHERE incident_id = %s",
                             (incident["id"],))
    assert "person:alice" in {t["actor"] for t in timeline}
