"""Escalation with real processes: `erdu worker` pools, `erdu beat` running the sweeper, the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from erdu_tasks.store.db import Database
from tests.conftest import NOOP_RUNBOOK, incident_rows, wait_for
from tests.integration.escalation_support import endpoints  # noqa: F401 (fixtures)
from tests.integration.escalation_support import escalate, new_incident, rows, webhook

RUNBOOKS = NOOP_RUNBOOK



@pytest.fixture()
def runbooks(tmp_path):
    folder = tmp_path / "runbooks"
    folder.mkdir()
    (folder / "test.yaml").write_text(RUNBOOKS)
    return folder


def start_beat(stack) -> subprocess.Popen:
    log_path = stack.tmp / "beat.log"
    proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", "beat", "--loglevel", "INFO"], env=stack.env,
                            cwd=stack.tmp, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    stack.procs.setdefault("beat", []).append(proc)
    return proc


def env_for(escalation: dict, **extra: str) -> dict[str, str]:
    return {"ERDU_ESCALATION": json.dumps(escalation), **extra}


def sweep(stack) -> None:
    stack.client.send_task("erdu.sweep_escalations", queue="monitor")


_SWEEP_END = re.compile(r"Task erdu\.sweep_escalations\[[0-9a-f-]+\] (?:succeeded|raised|failed)")


def sweeps_finished(stack) -> int:
    """How many sweeps the stack's workers have run to the end (Celery logs each task's end)."""
    return sum(len(_SWEEP_END.findall(log.read_text(errors="replace"))) for log in stack.tmp.glob("*.log"))


def timeline(stack, incident_id: str) -> list[str]:
    return [r["what"] for r in incident_rows(stack.database_url, "SELECT what FROM incident_timeline"
                                             " WHERE incident_id = %s ORDER BY id", (incident_id,))]


@pytest.mark.slow(9)
def test_a_worker_restart_between_levels_loses_no_step_and_repeats_nothing(stack_factory, endpoints):
    config = {"channels": {"first": webhook(endpoints, "/first"), "second": webhook(endpoints, "/second")},
              "policies": {"default": [{"channels": ["first"], "ack_deadline": "4s"}, {"channels": ["second"]}]},
              "stuck_after": "off"}
    stack = stack_factory(env_for(config))
    stack.start("monitor")
    db = Database(stack.database_url)
    try:
        with db.transaction() as conn:
            iid = new_incident(conn, service="orders-db")
            escalate(conn, iid, now=datetime.now(timezone.utc))
        sweep(stack)
        wait_for(lambda: rows(db, "SELECT 1 FROM deliveries WHERE ok"), 60, what="level 1 delivered and recorded")
        stack.kill("monitor")
        # While no worker runs, the deadline passes and beat keeps scheduling sweeps (they wait in Redis).
        time.sleep(4.5)
        for _ in range(3):
            sweep(stack)
        stack.start("monitor")
        wait_for(lambda: endpoints.at("/second"), 60, what="level 2 after the restart")
        stack.run_task("erdu.sweep_escalations", queue="monitor")   # one more whole sweep sends nothing new
        assert [r.json["level"] for r in endpoints.at("/first")] == [1]
        assert [r.json["level"] for r in endpoints.at("/second")] == [2]
        workers = {r["worker"] for r in rows(db, "SELECT worker FROM incident_timeline WHERE incident_id = %s"
                                                 " AND what LIKE 'level %%notification sent%%'", (iid,))}
        assert len(workers) == 2, f"the two levels were sent by two worker processes: {workers}"
    finally:
        db.close()


@pytest.mark.slow(31)
def test_an_incident_the_fixer_cannot_fix_pages_until_acknowledged_and_resolves_on_close(stack_factory, endpoints,
                                                                                         runbooks):
    config = {"channels": {"oncall": webhook(endpoints, "/oncall")},
              "policies": {"default": [{"channels": ["oncall"], "repeat_interval": "3s"}]},
              "sweep_interval": "1s", "stuck_after": "off"}
    stack = stack_factory(env_for(config, ERDU_RUNBOOKS_DIR=str(runbooks)))
    stack.start_all(("ingest", "commander", "diagnostician", "fixer", "resolver", "monitor"))
    start_beat(stack)
    stack.send_event({"message": "Payment gateway unfixable: code 7", "service": "payments", "source": "test"})
    first = wait_for(lambda: endpoints.at("/oncall"), 90, what="the on-call webhook called")[0].json
    iid = first["incident_id"]
    assert first["status"] == "escalated" and first["see"]["command"] == f"erdu incidents show {iid}"
    assert "always-broken did not fix it" in first["reason"]
    assert [f["action"] for f in first["attempted_fixes"]][:1] == ["always-broken: noop"]
    assert first["attempted_fixes"][0]["ok"] is False

    wait_for(lambda: any(r.json["repeat"] >= 1 for r in endpoints.at("/oncall")), 30, what="a reminder")
    done = stack.erdu("incidents", "ack", iid)
    assert done.returncode == 0, done.stderr
    after_ack = sweeps_finished(stack)
    # A sweep already running may still finish its reminder: wait for two more to end (events, not sleeps).
    wait_for(lambda: sweeps_finished(stack) >= after_ack + 2, 30, 0.1, what="two sweeps after the ack")
    seen = len(endpoints.at("/oncall"))
    quiet_from, base = time.monotonic(), sweeps_finished(stack)
    # Then sweeps over more than two repeat intervals (3 s): a reminder would be due in that time.
    wait_for(lambda: sweeps_finished(stack) >= base + 4 and time.monotonic() - quiet_from > 6.5, 60, 0.1,
             what="sweeps over two repeat intervals")
    assert len(endpoints.at("/oncall")) == seen, "no reminder after the acknowledgement"

    done = stack.erdu("incidents", "resolve", iid, "--note", "gateway restarted by hand")
    assert done.returncode == 0, done.stderr
    resolved = wait_for(lambda: [r.json for r in endpoints.at("/oncall") if r.json["kind"] == "resolve"], 60,
                        what="the resolve notice")
    assert resolved[0]["incident_id"] == iid
    whats = timeline(stack, iid)
    assert any(w.startswith("level 1 notification sent to oncall: HTTP 200") for w in whats)
    assert "escalation stopped at level 1: acknowledged" in whats
    assert "resolve notice queued for oncall" in whats


@pytest.mark.slow(30)
def test_a_silenced_incident_is_counted_but_quiet_and_unfixed_and_resumes_when_the_silence_ends(
        stack_factory, endpoints, runbooks):
    config = {"channels": {"oncall": webhook(endpoints, "/oncall")}, "sweep_interval": "1s", "stuck_after": "off"}
    stack = stack_factory(env_for(config, ERDU_RUNBOOKS_DIR=str(runbooks)))
    added = stack.erdu("silence", "add", "service=orders", "--comment", "orders-db failover drill",
                       "--duration", "2h")
    assert added.returncode == 0, added.stderr
    silence_id = re.search(r"SIL-[0-9a-f]{12}", added.stdout).group(0)
    stack.start_all(("ingest", "commander", "diagnostician", "fixer", "resolver", "monitor"))
    start_beat(stack)
    event = {"message": "Database connection failed: too many clients", "service": "orders", "source": "test"}
    stack.send_event(event)
    iid = wait_for(lambda: incident_rows(stack.database_url), 60, what="the incident")[0]["id"]
    wait_for(lambda: any(w.startswith(f"silenced by {silence_id}") for w in timeline(stack, iid)), 60,
             what="the silence on the timeline")
    stack.send_event(event)
    wait_for(lambda: incident_rows(stack.database_url, "SELECT occurrences FROM incidents")[0]["occurrences"] == 2,
             30, what="the second occurrence counted")
    time.sleep(3)
    incident = incident_rows(stack.database_url, "SELECT status FROM incidents WHERE id = %s", (iid,))[0]
    assert incident["status"] == "detected"
    assert not incident_rows(stack.database_url, "SELECT * FROM action_runs"), "a silenced incident runs no fix"
    assert not endpoints.received, "a silenced incident notifies nobody"
    listed = [json.loads(line) for line in stack.erdu("silence", "ls", "--json").stdout.splitlines()]
    assert [(s["id"], s["state"], s["held_incidents"], s["held_occurrences"]) for s in listed] == [
        (silence_id, "active", 1, 2)]

    expired = stack.erdu("silence", "expire", silence_id)
    assert expired.returncode == 0, expired.stderr
    wait_for(lambda: incident_rows(stack.database_url, "SELECT status FROM incidents WHERE id = %s",
                                   (iid,))[0]["status"] == "closed", 90, what="resumed and fixed after the silence")
    assert incident_rows(stack.database_url, "SELECT * FROM action_runs"), "the fix ran once the silence ended"
    assert f"silence {silence_id} ended: resuming assess" in timeline(stack, iid)
    again = stack.erdu("silence", "expire", silence_id)
    assert again.returncode == 1 and "already over" in again.stderr


def test_an_incident_stuck_in_a_stage_is_escalated_by_the_sweeper(stack_factory, endpoints):
    config = {"channels": {"oncall": webhook(endpoints, "/oncall")}, "stuck_after": "1m"}
    stack = stack_factory(env_for(config))
    stack.start("monitor")
    db = Database(stack.database_url)
    try:
        with db.transaction() as conn:
            stuck = new_incident(conn, service="orders")
            recent = new_incident(conn, service="billing")
            conn.execute("UPDATE incidents SET status = 'investigating',"
                         " status_changed_at = now() - interval '5 minutes' WHERE id = %s", (stuck,))
        sweep(stack)
        page = wait_for(lambda: endpoints.at("/oncall"), 60, what="the stuck incident paged")[0].json
        assert page["incident_id"] == stuck and "stuck in investigating for over 1 min" in page["reason"]
        statuses = {r["id"]: r["status"] for r in rows(db, "SELECT id, status FROM incidents")}
        assert statuses == {stuck: "escalated", recent: "detected"}
        assert rows(db, "SELECT stage FROM escalations WHERE incident_id = %s", (stuck,))[0]["stage"] == "fix"
    finally:
        db.close()
