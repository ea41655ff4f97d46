"""Celery app watcher throughput: how many task events per second `erdu celery-apps watch` keeps up with.

A private Redis (the watched app's broker) and database; the real watcher process; this process publishes a
synthetic app's events as Celery's event dispatcher does (task-received, task-started, then task-succeeded,
or task-failed with a traceback for one task in `--fail-every`, and worker heartbeats) at `--rate` events
per second for `--seconds`. Kept up means every task's row reached Postgres in its final state, and the
figure is the events sent divided by the time from the first event to the last row written. Prints events/s,
the lag after the producer stopped, the watcher's memory (RSS at start and peak) and the failure incident's
count; `--json PATH` writes them.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import BenchStack, write_json  # noqa: E402

TRACEBACK = '''Traceback (most recent call last):
  File "/srv/venv/lib/python3.11/site-packages/celery/app/trace.py", line 453, in trace_task
    R = retval = fun(*args, **kwargs)
  File "/srv/shop/orders.py", line 41, in charge
    _validate(order)
  File "/srv/shop/orders.py", line 20, in _validate
    raise PaymentDeclined(order)
shop.errors.PaymentDeclined: card declined for order {n}
'''


def _envelope(kind: str, fields: dict, clock: int) -> tuple[str, bytes]:
    """The channel and bytes Celery's event dispatcher publishes for one event on a Redis broker (db 0)."""
    body = {"hostname": "bench@shop", "utcoffset": 0.0, "pid": os.getpid(), "clock": clock, **fields,
            "timestamp": time.time(), "type": kind}
    key = kind.replace("-", ".")
    message = {"body": base64.b64encode(json.dumps(body).encode()).decode(), "content-encoding": "utf-8",
               "content-type": "application/json", "headers": {"hostname": "bench@shop"},
               "properties": {"delivery_mode": 1, "delivery_info": {"exchange": "celeryev", "routing_key": key},
                              "priority": 0, "body_encoding": "base64", "delivery_tag": str(uuid.uuid4())}}
    return f"/0.celeryev/{key}", json.dumps(message).encode()


def produce(broker_url: str, rate: float, seconds: float, fail_every: int) -> tuple[int, int, int, float]:
    """Publish the synthetic stream (the dispatcher's exact messages, pipelined); returns (events, tasks,
    failures, seconds taken). Celery's own dispatcher tops out near 1,000 events/s in one process here,
    below the rate to measure, so the bytes it would publish are built and sent in batches."""
    import redis

    client = redis.Redis.from_url(broker_url)
    events = tasks = failures = 0
    started = time.monotonic()
    next_beat = 0.0
    while True:
        elapsed = time.monotonic() - started
        if elapsed >= seconds:
            break
        batch = []
        if elapsed >= next_beat:
            batch.append(("worker-heartbeat", {"active": 1, "processed": tasks, "freq": 1.0}))
            next_beat = elapsed + 1.0
        due = int(elapsed * rate)
        while events + len(batch) < due:
            tid = str(uuid.uuid4())
            n = tasks
            tasks += 1
            batch.append(("task-received", {"uuid": tid, "name": "shop.charge", "args": f"({n}, 12.5)",
                                            "kwargs": "{'currency': 'EUR'}", "retries": 0, "root_id": tid,
                                            "parent_id": None}))
            batch.append(("task-started", {"uuid": tid}))
            if fail_every and n % fail_every == 0:
                failures += 1
                batch.append(("task-failed", {"uuid": tid, "exception": f"PaymentDeclined({n})",
                                              "traceback": TRACEBACK.format(n=n)}))
            else:
                batch.append(("task-succeeded", {"uuid": tid, "result": "'ok'", "runtime": 0.01}))
        with client.pipeline(transaction=False) as pipe:
            for kind, fields in batch:
                events += 1
                pipe.publish(*_envelope(kind, fields, events))
            pipe.execute()
        time.sleep(0.005)
    client.close()
    return events, tasks, failures, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2500.0, help="events per second to publish")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long to publish")
    parser.add_argument("--fail-every", type=int, default=20, help="one task in N fails (0: none)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    opts = parser.parse_args()

    with BenchStack() as stack:
        section = {"celery_apps": {"flush_interval": 0.5, "check_interval": 2.0, "apps": [
            {"name": "shop", "broker_url": stack.redis_url, "queues": ["celery"], "in_app": ["shop"]}]}}
        env = {**stack.env, "ERDU_MONITORS": json.dumps(section)}
        log_path = stack.tmp / "watch.log"
        watcher = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", "celery-apps", "watch"], env=env,
                                   stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
                                   cwd=stack.tmp)
        proc = psutil.Process(watcher.pid)
        peak = [0.0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                try:
                    peak[0] = max(peak[0], proc.memory_info().rss / 2**20)
                except psutil.Error:
                    return
                done.wait(0.2)

        try:
            deadline = time.monotonic() + 60
            while b"watching celery events" not in log_path.read_bytes():
                if watcher.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the watcher did not start:\n" + log_path.read_text()[-2000:])
                time.sleep(0.1)
            time.sleep(0.5)   # subscribed just after it says so
            rss_start = proc.memory_info().rss / 2**20
            threading.Thread(target=sample, daemon=True).start()
            t0 = time.monotonic()
            events, tasks, failures, took = produce(stack.redis_url, opts.rate, opts.seconds, opts.fail_every)
            sent_at = time.monotonic()
            final = 0
            while time.monotonic() < sent_at + 120:
                final = stack.query("SELECT count(*) AS n FROM celery_app_tasks WHERE state IN ('SUCCESS', 'FAILURE')"
                                    )[0]["n"]
                if final >= tasks:
                    break
                time.sleep(0.2)
            written_at = time.monotonic()
            incident = stack.query("SELECT occurrences FROM incidents WHERE labels->>'kind' = 'failure'")
            reconnects = log_path.read_text(errors="replace").count("reconnecting")
        finally:
            done.set()
            os.killpg(watcher.pid, signal.SIGTERM)
            try:
                watcher.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(watcher.pid, signal.SIGKILL)
    kept_up = final >= tasks
    figures = {
        "events_sent": events, "tasks": tasks, "failures": failures, "publish_seconds": round(took, 2),
        "offered_events_per_second": round(events / took, 1),
        "events_per_second_end_to_end": round(events / (written_at - t0), 1),
        "lag_after_producer_seconds": round(written_at - sent_at, 2),
        "tasks_written_final": final, "kept_up": kept_up, "reconnects": reconnects,
        "failure_incident_occurrences": incident[0]["occurrences"] if incident else 0,
        "watcher_rss_mb_start": round(rss_start, 1), "watcher_rss_mb_peak": round(peak[0], 1),
    }
    for key, value in figures.items():
        print(f"{key:34} {value}")
    write_json(opts.json, figures)
    if not kept_up:
        sys.exit(1)


if __name__ == "__main__":
    main()
