"""The Python client and the logging handler against a real Redis, a real API and real workers."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
import textwrap
import time

import pytest
import redis as redis_lib

from erdu_tasks.client.producer import Client, ClientError, report_event
from erdu_tasks.client.logging_handler import ErduHandler
from tests.conftest import ROOT, RedisServer, free_port, incident_rows, wait_for
from tests.integration.test_api import WRITE, ApiServer


def queued_events(redis_url: str) -> list:
    """The first argument of every erdu.ingest message waiting on the ingest queue."""
    out = []
    for raw in redis_lib.Redis.from_url(redis_url).lrange("ingest", 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == "erdu.ingest"
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, _kwargs, _embed = json.loads(body)
        out.append(args[0])
    return out


@pytest.fixture()
def private_redis(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def test_send_over_celery_puts_the_event_on_the_ingest_queue(private_redis):
    client = Client(private_redis.url)
    task_id = client.send({"message": "Celery path works", "service": "client"})
    assert task_id
    assert queued_events(private_redis.url) == [{"message": "Celery path works", "service": "client"}]
    client.close()


def test_an_invalid_event_is_refused_locally_and_is_not_worth_retrying(private_redis):
    with pytest.raises(ClientError) as info:
        Client(private_redis.url).send({"message": "x", "count": "lots"})
    assert "count" in str(info.value) and info.value.retryable is False
    assert queued_events(private_redis.url) == []


def test_with_redis_down_send_fails_fast_and_says_retrying_helps():
    started = time.monotonic()
    with pytest.raises(ClientError) as info:
        Client(f"redis://127.0.0.1:{free_port()}/0").send({"message": "nobody listens"})
    assert info.value.retryable is True and "Redis" in str(info.value)
    assert time.monotonic() - started < 10


def test_report_event_over_http_answers_the_incident_id(tmp_path, redis_server, database_url):
    api = ApiServer(tmp_path, redis_server.url.replace("/0", "/11"), database_url, {"ERDU_API_TOKEN": WRITE}).start()
    try:
        incident_id = report_event("Checkout latency above 2s", url=api.url, token=WRITE, service="checkout",
                                   severity="P2", labels={"region": "eu"}, details={"p99_ms": 2300})
        row = incident_rows(database_url, "SELECT service, severity, labels FROM incidents WHERE id = %s",
                            (incident_id,))
        assert row == [{"service": "checkout", "severity": "P2", "labels": {"region": "eu"}}]
        with pytest.raises(ClientError) as info:
            report_event("wrong token", url=api.url, token="nope")
        assert "401" in str(info.value) and info.value.retryable is False
    finally:
        api.stop()
    with pytest.raises(ClientError) as info:
        report_event("API is down", url=api.url, token=WRITE)
    assert info.value.retryable is True


def test_erdu_send_goes_through_the_same_client(stack_factory):
    stack = stack_factory()
    done = stack.erdu("send", "Disk almost full", "--service", "files", "--label", "mount=/srv", "--wait", "0")
    assert done.returncode == 0, done.stderr
    assert "sent (task" in done.stdout
    (event,) = queued_events(stack.redis_url)
    assert event["message"] == "Disk almost full" and event["labels"] == {"mount": "/srv"}
    bad = stack.erdu("send", "x", "--count", "0")
    assert bad.returncode != 0 and "count" in bad.stderr


@pytest.mark.slow(12)
def test_erdu_send_says_which_incident_the_event_became_or_how_to_find_it(stack_factory):
    stack = stack_factory()
    waited = stack.erdu("send", "Cache node unreachable", "--service", "cache", "--wait", "1")
    assert waited.returncode == 0, waited.stderr
    assert "not ingested within 1 s" in waited.stdout and "erdu incidents ls --service cache" in waited.stdout
    stack.start("ingest")
    first = stack.erdu("send", "Cache node unreachable", "--service", "cache")
    again = stack.erdu("send", "Cache node unreachable", "--service", "cache")
    incident = incident_rows(stack.database_url, "SELECT id FROM incidents")[0]["id"]
    assert f"incident {incident} (detected, 2 occurrence(s))" in first.stdout + again.stdout, (first.stdout,
                                                                                              again.stdout)
    assert f"incident {incident} (detected, 3 occurrence(s))" in again.stdout


def test_the_handler_folds_a_storm_of_one_error_into_one_event_with_a_count(private_redis):
    handler = ErduHandler(url=private_redis.url, service="storm-app", capacity=10, flush_interval=0.2)
    log = logging.getLogger("storm-test")
    log.propagate = False
    log.addHandler(handler)
    try:
        started = time.perf_counter()
        for _ in range(10_000):
            log.error("Queue consumer lost its connection")
        log.warning("below the level: not sent")
        per_call = (time.perf_counter() - started) / 10_000
        wait_for(lambda: handler.sent == 10_000, 30, what="10,000 records sent")
    finally:
        log.removeHandler(handler)
        handler.close()
    events = [e for batch in queued_events(private_redis.url) for e in (batch if isinstance(batch, list) else [batch])]
    assert sum(e["count"] for e in events) == 10_000 and handler.dropped == 0
    assert {e["message"] for e in events} == {"Queue consumer lost its connection"}
    assert events[0]["service"] == "storm-app" and events[0]["labels"]["logger"] == "storm-test"
    assert per_call < 0.001, f"emit took {per_call * 1e6:.0f} µs"


CHILD = textwrap.dedent("""
    import logging, sys, time
    from erdu_tasks.client.logging_handler import ErduHandler

    handler = ErduHandler(url=sys.argv[1], service="billing", capacity=20, flush_interval=0.2, max_backoff=0.5)
    log = logging.getLogger("billing.jobs")
    log.addHandler(handler)
    log.propagate = False

    started = time.perf_counter()
    try:
        {}["invoice_total"]
    except KeyError:
        log.exception("Invoice run failed")
    for n in range(30):                      # 19 fit in the buffer beside the exception, 11 do not
        log.error("Retry budget exhausted for job %d", n)
    print(f"logged in {(time.perf_counter() - started) * 1000:.1f} ms", flush=True)
    deadline = time.monotonic() + 120
    beats = 0
    while time.monotonic() < deadline and handler.stats()["waiting"]:
        beats += 1
        print(f"beat {beats} {handler.stats()}", flush=True)
        time.sleep(0.25)
    handler.close()
    print("final", handler.stats(), flush=True)
""")


def test_a_program_logs_an_exception_while_erdu_is_down_keeps_running_and_the_event_arrives_later(
        stack_factory, tmp_path):
    broker = RedisServer(tmp_path)
    stack = stack_factory(redis_url=broker.url)
    broker.stop()  # ERDU is down
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), broker.url], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    lines: list[str] = []
    try:
        lines.append(child.stdout.readline())
        assert lines[0].startswith("logged in"), lines
        assert float(lines[0].split()[2]) < 500, "logging must not wait for ERDU"
        for _ in range(8):  # the program keeps running while ERDU is down
            lines.append(child.stdout.readline())
        assert child.poll() is None and lines[-1].startswith("beat"), lines
        assert incident_rows(stack.database_url) == []

        broker.start()  # ERDU comes back
        stack.start("ingest")
        rows = wait_for(lambda: incident_rows(
            stack.database_url, "SELECT title, description, service, occurrences FROM incidents ORDER BY title"),
            60, what="incidents from the log records")
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
        broker.stop()
    assert child.returncode == 0, out
    final = [line for line in out.splitlines() if line.startswith("final")][0]
    assert "'dropped': 11" in final and "'sent': 20" in final, final
    wait_for(lambda: len(incident_rows(stack.database_url)) == 2, 30, what="both incidents")
    rows = incident_rows(stack.database_url, "SELECT description, service, occurrences FROM incidents")
    invoice = next(r for r in rows if "Invoice run failed" in r["description"])
    assert "KeyError: 'invoice_total'" in invoice["description"] and "Traceback" in invoice["description"]
    assert invoice["service"] == "billing"
    retries = next(r for r in rows if "Retry budget" in r["description"])
    assert retries["occurrences"] == 19
