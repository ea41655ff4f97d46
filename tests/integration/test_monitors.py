"""Monitors against real files, a real HTTP server, real Postgres, Redis and worker processes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from erdu_tasks.store.db import Database
from erdu_tasks.monitors import http_probe, logtail, state, system
from erdu_tasks.monitors.config import load_monitors
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings
from tests.conftest import incident_rows, wait_for


def ingest_rt(url: str) -> Runtime:
    """The runtime the ingest entry reads (built-in rules, no catalog, default settings) on this database."""
    return Runtime(load_settings(database_url=url))

KINDS = {
    "A": "2024-05-01T10:00:{s:02d} ERROR checkout failed for order {n}",
    "B": "2024-05-01T10:01:{s:02d} ERROR inventory sync failed for sku {n}",
    "C": "2024-05-01T10:02:{s:02d} CRITICAL payment gateway unreachable after {n} attempts",
}
TITLES = {"A": "checkout failed", "B": "inventory sync failed", "C": "payment gateway unreachable"}


class Writer:
    """Writes numbered error lines of a kind (and noise), remembering how many of each it wrote."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.n = 0

    def lines(self, kind: str, k: int, noise: bool = True) -> bytes:
        out = []
        for _ in range(k):
            self.n += 1
            out.append(KINDS[kind].format(s=self.n % 60, n=self.n))
            self.counts[kind] += 1
            if noise:
                out.append(f"2024-05-01T10:03:00 INFO request {self.n} served in 3 ms")
        return ("\n".join(out) + "\n").encode()


def occurrences(url: str) -> Counter[str]:
    rows = incident_rows(url, "SELECT title, occurrences FROM incidents WHERE source = 'log'")
    found: Counter[str] = Counter()
    for r in rows:
        kind = next((k for k, t in TITLES.items() if t in r["title"]), r["title"])
        found[kind] += r["occurrences"]
    return found


@pytest.fixture()
def tail_env(fresh_database_url, redis_server, tmp_path):
    """A log directory, a tailer config factory and the tailer's dependencies on private services."""
    db = Database(fresh_database_url)
    client = redis.Redis.from_url(redis_server.url)
    created: list[str] = []
    deps = logtail.TailDeps(db=db, redis=client, rt=ingest_rt(fresh_database_url),
                            notify=created.append, host="test-host")
    logs = tmp_path / "logs"
    logs.mkdir()

    def config(**files_kw):
        kw = {k: files_kw.pop(k) for k in list(files_kw) if k in ("rotate_wait", "hold_timeout", "max_line_bytes")}
        files = [{"path": str(logs / "app.log"), "service": "orders", "from_start": True, **files_kw}]
        return load_monitors({"logs": {"files": files, **kw}}).logs

    yield logs, config, deps, created, fresh_database_url
    db.close()
    client.close()


def scan(config, deps):
    logtail._registered.clear()  # every scan behaves like a fresh worker process: state is only in Postgres
    return logtail.scan(config, deps)


def test_every_error_line_becomes_exactly_one_event_through_append_rotate_truncate_and_restart(tail_env, monkeypatch):
    logs, config, deps, created, url = tail_env
    cfg = config(rotate_wait=30)
    w = Writer()
    log_path = logs / "app.log"
    out = open(log_path, "ab", buffering=0)

    # Append in pieces, with a partial last line that is only counted once complete.
    out.write(w.lines("A", 10))
    scan(cfg, deps)
    assert occurrences(url) == {"A": 10}
    out.write(w.lines("A", 5) + b"2024-05-01T10:00:00 ERROR checkout failed for ord")
    scan(cfg, deps)
    assert occurrences(url) == {"A": 15}
    out.write(b"er 77\n")
    w.counts["A"] += 1
    scan(cfg, deps)
    assert occurrences(url) == w.counts

    # A crash after reading and before committing loses nothing and repeats nothing.
    out.write(w.lines("A", 7))
    real_report = state.report
    monkeypatch.setattr(state, "report", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("worker died")))
    with pytest.raises(RuntimeError):
        scan(cfg, deps)
    monkeypatch.setattr(state, "report", real_report)
    assert occurrences(url)["A"] == w.counts["A"] - 7
    scan(cfg, deps)
    assert occurrences(url) == w.counts

    # Rotation: rename, the writer keeps appending to the old file through its open handle,
    # a new file appears at the path. The old file's rest is read first, then the new file.
    os.rename(log_path, logs / "app.log.1")
    out.write(w.lines("A", 5))
    new = open(log_path, "ab", buffering=0)
    new.write(w.lines("B", 3))
    scan(cfg, deps)
    assert occurrences(url) == w.counts
    out.write(w.lines("A", 2))  # a late write to the rotated file, within rotate_wait
    new.write(w.lines("B", 2))
    scan(cfg, deps)
    assert occurrences(url) == w.counts
    out.close()

    # Truncation (copytruncate style): the file shrinks and is written again from its start.
    new.truncate(0)
    new.seek(0)
    new.write(w.lines("C", 1, noise=False))
    scan(cfg, deps)
    assert occurrences(url) == w.counts
    new.write(w.lines("C", 4))
    scan(cfg, deps)
    assert occurrences(url) == w.counts

    # Replaced in place with a longer file (same inode, new first bytes).
    with open(log_path, "r+b") as fh:
        fh.truncate(0)
        fh.write(w.lines("B", 30))
    scan(cfg, deps)
    assert occurrences(url) == w.counts
    new.close()

    # Nothing changes when nothing is written: scans are idempotent.
    scan(cfg, deps)
    scan(cfg, deps)
    assert occurrences(url) == w.counts
    assert len(created) == 3  # one new incident per kind, each handed to the pipeline once
    rows = incident_rows(url, "SELECT service, host, labels, status FROM incidents")
    assert all(r["service"] == "orders" and r["host"] == "test-host" and r["labels"]["path"] == str(log_path)
               for r in rows)


def test_a_file_rotated_twice_before_a_scan_loses_only_what_no_longer_exists(tail_env):
    logs, config, deps, created, url = tail_env
    cfg = config(rotate_wait=0)
    w = Writer()
    path = logs / "app.log"
    path.write_bytes(w.lines("A", 3))
    scan(cfg, deps)
    with open(path, "ab") as fh:
        fh.write(w.lines("A", 4))
    os.rename(path, logs / "app.log.1")
    path.write_bytes(w.lines("B", 2))
    scan(cfg, deps)
    assert occurrences(url) == w.counts
    # rotate_wait 0: the rotated file is finished and forgotten after one drain
    rows = incident_rows(url, "SELECT rotated FROM tail_positions")
    assert rows[0]["rotated"] is None


def test_lines_already_in_a_file_when_it_is_first_watched_are_not_reported(tail_env):
    logs, config, deps, created, url = tail_env
    cfg = config(from_start=False)
    w = Writer()
    (logs / "app.log").write_bytes(w.lines("A", 5) + b"2024 ERROR half a li")
    scan(cfg, deps)
    assert occurrences(url) == {}
    with open(logs / "app.log", "ab") as fh:
        fh.write(b"ne\n" + w.lines("B", 2))
    scan(cfg, deps)
    # The line still being written when the watch began is read once it is complete.
    assert occurrences(url) == {"B": 2, "half a line": 1}


def test_a_file_that_appears_later_is_read_from_its_start(tail_env):
    logs, config, deps, created, url = tail_env
    cfg = load_monitors({"logs": {"files": [{"path": str(logs / "*.log"), "service": "orders"}]}}).logs
    w = Writer()
    (logs / "old.log").write_bytes(w.lines("A", 3))
    scan(cfg, deps)
    assert occurrences(url) == {}
    (logs / "new.log").write_bytes(w.lines("B", 4))
    with open(logs / "old.log", "ab") as fh:
        fh.write(w.lines("A", 1))
    scan(cfg, deps)
    assert occurrences(url) == {"A": 1, "B": 4}


def test_a_partial_line_left_unfinished_is_taken_after_the_hold_timeout(tail_env):
    logs, config, deps, created, url = tail_env
    cfg = config(hold_timeout=0.3)
    with open(logs / "app.log", "ab", buffering=0) as fh:
        fh.write(b"2024 ERROR checkout failed for order 1\n2024 ERROR inventory sync failed for sku 9")
        scan(cfg, deps)
        assert occurrences(url) == {"A": 1}
        time.sleep(0.4)
        scan(cfg, deps)
        assert occurrences(url) == {"A": 1, "B": 1}
        fh.write(b"9 (the rest of the held line, never counted twice)\n2024 ERROR inventory sync failed for sku 3\n")
        scan(cfg, deps)
    assert occurrences(url) == {"A": 1, "B": 2}


def test_a_watched_path_that_cannot_be_read_is_one_incident_until_it_recovers(tail_env):
    logs, config, deps, created, url = tail_env
    cfg = config()
    os.mkfifo(logs / "app.log")  # opening a FIFO would block the worker: it must be refused, not read
    for _ in range(3):
        stats = scan(cfg, deps)
        assert stats[0].skipped == "cannot read: not a regular file"
    rows = incident_rows(url)
    assert len(rows) == 1 and rows[0]["occurrences"] == 1 and rows[0]["source"] == "monitor"
    assert str(logs / "app.log") in rows[0]["description"]
    os.unlink(logs / "app.log")
    (logs / "app.log").write_bytes(b"2024 ERROR checkout failed for order 5\n")
    scan(cfg, deps)
    timeline = incident_rows(url, "SELECT what FROM incident_timeline WHERE incident_id = %s", (rows[0]["id"],))
    assert any(t["what"].startswith("recovered") for t in timeline)
    assert occurrences(url)["A"] == 1


def test_a_traceback_split_across_writes_is_one_event(tail_env):
    logs, config, deps, created, url = tail_env
    cfg = config()
    path = logs / "app.log"
    with open(path, "ab", buffering=0) as fh:
        fh.write(b"2024-05-01 ERROR order handler crashed\nTraceback (most recent call last):\n"
                 b'  File "orders.py", line 42, in handle\n')
        scan(cfg, deps)
        assert incident_rows(url) == []
        fh.write(b"    total = price / qty\nZeroDivisionError: division by zero\n2024-05-01 INFO next request\n")
        scan(cfg, deps)
    rows = incident_rows(url)
    assert len(rows) == 1 and rows[0]["occurrences"] == 1
    assert "ZeroDivisionError" in rows[0]["description"] and "ERROR order handler crashed" in rows[0]["description"]


def test_binary_garbage_invalid_utf8_and_a_10_mb_line_are_survived(tail_env):
    logs, config, deps, created, url = tail_env
    cfg = config()
    rng = random.Random(7)
    garbage = bytes(rng.getrandbits(8) for _ in range(200_000)).replace(b"\n", b" ")
    big = b"2024-05-01 ERROR giant payload " + b"x" * (10 * 1024 * 1024)
    (logs / "app.log").write_bytes(garbage + b"\n\xff\xfe\x00 ERROR caf\xe9 au lait spilled\n" + big
                                   + b"\n2024-05-01 ERROR after the giant line\n")
    scan(cfg, deps)
    rows = {r["title"]: r for r in incident_rows(url)}
    giant = next(r for t, r in rows.items() if "giant payload" in t)
    assert giant["labels"]["truncated"] == "true" and len(giant["description"]) < 70_000
    assert giant["description"].startswith("2024-05-01 ERROR giant payload xxx")
    assert any("after the giant line" in t for t in rows)
    spilled = next(r for t, r in rows.items() if "spilled" in t)
    assert "\ufffd" in spilled["description"]
    pos = incident_rows(url, "SELECT byte_offset FROM tail_positions")[0]
    assert pos["byte_offset"] == (logs / "app.log").stat().st_size


def test_concurrent_scanners_never_count_a_line_twice(tail_env):
    logs, config, deps, created, url = tail_env
    cfg = config()
    w = Writer()
    path = logs / "app.log"
    stop = threading.Event()
    errors: list[BaseException] = []

    def scanner():
        while not stop.is_set():
            try:
                logtail.scan(cfg, deps)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=scanner) for _ in range(4)]
    for t in threads:
        t.start()
    with open(path, "ab", buffering=0) as fh:
        for _ in range(40):
            fh.write(w.lines("A", 5))
            time.sleep(0.01)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    scan(cfg, deps)
    assert not errors, errors
    assert occurrences(url) == w.counts


# --- HTTP probes -------------------------------------------------------------------------------


class Flaky:
    """A tiny HTTP server whose status and delay a test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.delay = 0.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                time.sleep(outer.delay)
                self.send_response(outer.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/health"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def flaky():
    server = Flaky()
    yield server
    server.close()


def test_a_probe_fails_three_times_opens_one_incident_recovers_and_flaps(fresh_database_url, flaky):
    db = Database(fresh_database_url)
    created: list[str] = []
    cfg = load_monitors({"probes": {"checks": [{"name": "orders-health", "url": flaky.url, "failures": 3,
                                                "expect_status": [200], "max_latency": 1.5, "timeout": 3,
                                                "service": "orders"}]}}).probes

    def run():   # a latency threshold a loaded machine's local answer never reaches, and a delay past it
        decisions = http_probe.run_probes(cfg, db, ingest_rt(fresh_database_url), created.append,
                                          host="h1", now=lambda: datetime.now(timezone.utc))
        return decisions[0].verdict.value

    assert run() == "ok"
    flaky.status = 503
    assert [run(), run()] == ["pending", "pending"]
    assert incident_rows(fresh_database_url) == []
    assert run() == "firing"
    rows = incident_rows(fresh_database_url)
    assert len(rows) == 1 and created == [rows[0]["id"]]
    incident = rows[0]
    assert incident["source"] == "probe" and incident["severity"] == "P2" and incident["service"] == "orders"
    assert incident["error_details"]["check"] == cfg.checks[0].check_spec()
    assert incident["error_details"]["check"]["check"] == "http"
    assert run() == "firing"  # still failing: the same incident, one more occurrence
    assert incident_rows(fresh_database_url, "SELECT occurrences FROM incidents")[0]["occurrences"] == 2

    flaky.status = 200
    assert run() == "recovered"
    assert run() == "ok"
    # Flap: the same failure mode again; one failure is not enough, three are: the same incident.
    flaky.status = 503
    assert [run(), run(), run()] == ["pending", "pending", "firing"]
    flaky.status = 200
    assert run() == "recovered"

    timeline = [t["what"] for t in incident_rows(
        fresh_database_url, "SELECT what FROM incident_timeline WHERE incident_id = %s ORDER BY id", (incident["id"],))]
    assert sum(t.startswith("recovered") for t in timeline) == 2
    assert sum(t.startswith("failing again") for t in timeline) == 1
    assert len(incident_rows(fresh_database_url)) == 1 and len(created) == 1
    st = incident_rows(fresh_database_url, "SELECT * FROM monitor_state WHERE key = 'probe:orders-health'")[0]
    assert st["recoveries"] == 2 and st["failures"] == 0 and st["incident_id"] == incident["id"]

    # Slow now (latency over the threshold): another failure mode of the probe, so another incident.
    flaky.delay = 1.7
    assert [run(), run(), run()] == ["pending", "pending", "firing"]
    flaky.delay = 0.0
    rows = incident_rows(fresh_database_url, "SELECT * FROM incidents ORDER BY created_at")
    assert len(rows) == 2 and rows[1]["fingerprint"] != incident["fingerprint"] and len(created) == 2
    assert rows[0]["labels"]["failure_mode"] == "5xx" and rows[1]["labels"]["failure_mode"] == "slow"
    db.close()


def test_the_fixer_validates_a_probe_incident_by_re_running_the_probe(fresh_database_url, flaky):
    from erdu_tasks.store import incidents as store
    from erdu_tasks.fixer.engine import validate
    from erdu_tasks.fixer.runbooks import Runbook

    db = Database(fresh_database_url)
    cfg = load_monitors({"probes": {"checks": [{"name": "api", "url": flaky.url, "failures": 1,
                                                "expect_status": [200]}]}}).probes
    flaky.status = 500
    decisions = http_probe.run_probes(cfg, db, ingest_rt(fresh_database_url), lambda i: None, host="h",
                                      now=lambda: datetime.now(timezone.utc))
    with db.transaction() as conn:
        incident = store.get_incident(conn, decisions[0].condition.incident_id)
    runbook = Runbook.model_validate({"name": "restart-api", "match": {"services": ["api"]},
                                      "actions": [{"action": "noop"}],
                                      "validation": {"check": "from_incident", "attempts": 2, "interval": 0.1}})
    failed = validate(runbook, incident, db)
    assert not failed["ok"] and "returned 500" in failed["detail"]
    flaky.status = 200
    passed = validate(runbook, incident, db)
    assert passed["ok"] and "returned 200" in passed["detail"]
    incident.error_details.pop("check")
    assert not validate(runbook, incident, db)["ok"]
    db.close()


def test_an_unreachable_probe_is_a_failure_not_a_crash(fresh_database_url):
    db = Database(fresh_database_url)
    from tests.conftest import free_port

    cfg = load_monitors({"probes": {"checks": [{"name": "gone", "url": f"http://127.0.0.1:{free_port()}/",
                                                "failures": 1, "timeout": 1}]}}).probes
    d = http_probe.run_probes(cfg, db, ingest_rt(fresh_database_url), lambda i: None, host="h",
                              now=lambda: datetime.now(timezone.utc))
    assert d[0].verdict.value == "firing" and "ConnectError" in d[0].observation.detail
    db.close()


# --- system --------------------------------------------------------------------------------------


def test_a_sustained_breach_and_a_missing_process_become_incidents_a_spike_does_not(fresh_database_url):
    db = Database(fresh_database_url)
    created: list[str] = []
    cfg = load_monitors({"system": {"memory": {"percent": 0.01, "sustained_for": 1.0},
                                    "disks": [{"path": "/", "percent": 100, "sustained_for": 0}],
                                    "processes": [{"name": "no-such-process-erdu", "sustained_for": 0,
                                                   "severity": "P1"}]}}).system

    def run():
        decisions = system.run_system(cfg, db, ingest_rt(fresh_database_url), created.append, host="h1",
                                      now=lambda: datetime.now(timezone.utc))
        return {d.observation.key: d.verdict.value for d in decisions}

    first = run()
    assert first["system:h1:memory"] == "pending"       # over the threshold, not yet for long enough
    assert first["system:h1:process:no-such-process-erdu"] == "firing"
    assert first["system:h1:disk:/"] == "ok"
    time.sleep(1.1)
    assert run()["system:h1:memory"] == "firing"
    rows = {r["title"]: r for r in incident_rows(fresh_database_url)}
    assert len(rows) == 2 and len(created) == 2
    proc = next(r for t, r in rows.items() if "no-such-process-erdu" in t)
    assert proc["severity"] == "P1" and proc["source"] == "system"
    db.close()


# --- Celery health and the log tailer with real workers and beat ----------------------------------


def _send(stack, task, *args):
    stack.client.send_task(task, args=args, queue="monitor", routing_key="monitor")


def test_a_stopped_role_worker_a_backlog_and_a_failed_task_become_incidents(stack_factory):
    monitors = {"celery": {"missing_for": 0, "roles": ["ingest", "fixer"], "ping_timeout": 1.0,
                           "backlog": {"default": 1000, "resolver": 3}}}
    stack = stack_factory({"ERDU_MONITORS": json.dumps(monitors)})
    stack.start_all(("monitor", "ingest", "fixer"), separate=True)
    url = stack.database_url

    def worker_state(role):
        rows = incident_rows(url, "SELECT * FROM monitor_state WHERE key = %s", (f"celery:worker:{role}",))
        return rows[0] if rows else None

    _send(stack, "erdu.monitor.celery")
    wait_for(lambda: (worker_state("fixer") or {}).get("last_status") == "ok", 30, what="fixer seen alive")
    assert incident_rows(url) == []

    stack.kill("fixer")

    def missing():
        stack.run_task("erdu.monitor.celery", queue="monitor")   # one whole pass, not a fixed sleep
        return incident_rows(url, "SELECT * FROM incidents WHERE title LIKE %s", ("%role fixer%",))

    rows = wait_for(missing, 60, interval=0, what="missing-worker incident")
    assert rows[0]["severity"] == "P1" and rows[0]["source"] == "celery"
    assert rows[0]["description"] == "No live ERDU worker for role fixer"
    assert worker_state("ingest")["last_status"] == "ok"

    # A backlog over its threshold on a queue nobody consumes.
    for i in range(5):
        stack.client.send_task("erdu.resolve", args=(f"INC-none-{i}",), queue="resolver", routing_key="resolver")
    # A task that really fails (a wrong argument) is recorded by the worker and reported once.
    _send(stack, "erdu.monitor.system", "unexpected-argument")
    wait_for(lambda: incident_rows(url, "SELECT 1 FROM failed_tasks"), 30, what="a failed task recorded")

    def reported():
        stack.run_task("erdu.monitor.celery", queue="monitor")   # one whole pass, not a fixed sleep
        backlog = incident_rows(url, "SELECT * FROM incidents WHERE title LIKE %s", ("%resolver overflowing%",))
        failed = incident_rows(url, "SELECT * FROM incidents WHERE title LIKE %s", ("%(workflow failure)%",))
        return (backlog, failed) if backlog and failed else None

    backlog, failed = wait_for(reported, 60, interval=0, what="backlog and workflow-failure incidents")
    assert backlog[0]["severity"] == "P2" and backlog[0]["error_details"]["details"]["length"] >= 5
    assert failed[0]["title"] == "TypeError in ERDU task erdu.monitor.system (workflow failure)"
    assert failed[0]["occurrences"] == 1 and failed[0]["severity"] == "P2"
    # Reported once: more passes do not bump the workflow failure again.
    stack.run_task("erdu.monitor.celery", queue="monitor")
    again = incident_rows(url, "SELECT occurrences FROM incidents WHERE id = %s", (failed[0]["id"],))
    assert again[0]["occurrences"] == 1

    # The fixer comes back: the recovery is on the incident's timeline.
    stack.start("fixer")

    def recovered():
        stack.run_task("erdu.monitor.celery", queue="monitor")   # one whole pass, not a fixed sleep
        return incident_rows(url, "SELECT what FROM incident_timeline WHERE incident_id = %s AND what LIKE %s",
                             (rows[0]["id"], "recovered%"))

    wait_for(recovered, 60, interval=0, what="recovery on the timeline")


def _start_beat(stack):
    log_path = stack.tmp / "beat.log"
    proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", "beat", "--loglevel", "INFO"], env=stack.env,
                            cwd=stack.tmp, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    proc.log_path = log_path
    stack.procs.setdefault("beat", []).append(proc)
    return proc


def test_beat_and_a_monitor_worker_killed_midway_report_every_line_exactly_once(stack_factory, tmp_path):
    logs = tmp_path / "watched"
    logs.mkdir()
    path = logs / "app.log"
    path.write_bytes(b"")
    monitors = {"logs": {"files": [{"path": str(path), "service": "orders"}]}}
    stack = stack_factory({"ERDU_MONITORS": json.dumps(monitors)})
    stack.start("monitor")
    _start_beat(stack)
    # Lines in the file before the watch's first scan are history, not news: wait for that scan.
    wait_for(lambda: incident_rows(stack.database_url, "SELECT 1 FROM tail_watches"), 60, what="the first scan")
    w = Writer()
    with open(path, "ab", buffering=0) as fh:
        fh.write(w.lines("A", 1))
        wait_for(lambda: occurrences(stack.database_url) == w.counts, 30, what="the first line detected")
        for i in range(60):
            fh.write(w.lines("A" if i % 2 else "B", 3))
            time.sleep(0.05)
            if i == 20:
                stack.kill("monitor")        # SIGKILL, mid-scan or between scans
            if i == 35:
                stack.start("monitor", wait=False)
        fh.write(w.lines("C", 2))
    stack.wait_ready("monitor", stack.procs["monitor"][-1])
    wait_for(lambda: occurrences(stack.database_url) == w.counts, 60,
             what=f"occurrences {dict(w.counts)}")
    time.sleep(2)  # and no more afterwards
    assert occurrences(stack.database_url) == w.counts
