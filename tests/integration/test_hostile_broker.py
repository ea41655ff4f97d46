"""The broker is untrusted input: queue entries that are not Celery messages, not even JSON, are recorded and skipped."""

from __future__ import annotations

import pytest
import redis
from kombu import Connection, Exchange, Queue

from erdu_tasks.celery_ext import broker
from tests.conftest import incident_rows, wait_for

NOT_JSON = [b"not json", b"\xff\xfe\x00binary garbage\x9c", b"{unterminated", b""]


@pytest.mark.parametrize("entry", NOT_JSON, ids=["text", "binary", "broken-json", "empty"])
def test_the_transport_turns_an_entry_that_is_not_json_into_a_rejectable_message(redis_server, entry):
    broker.install()
    url = f"redis://127.0.0.1:{redis_server.port}/14"
    redis.Redis.from_url(url).flushdb()
    queue = Queue("hostile", Exchange("hostile", type="direct"), routing_key="hostile")
    with Connection(url) as conn:
        channel = conn.channel()
        queue(channel).declare()
        redis.Redis.from_url(url).lpush("hostile", entry)
        got = []
        conn.Consumer(queue, callbacks=[lambda body, message: got.append(message)], channel=channel,
                      accept=["json"]).consume()
        conn.drain_events(timeout=5)
    assert len(got) == 1
    message = got[0]
    assert message.headers == {} and message.delivery_info["routing_key"] == "hostile"
    assert message.decode() == {broker.FOREIGN_KEY: entry.decode("utf-8", "replace")}


def test_a_worker_records_an_entry_that_is_not_json_and_serves_on(stack_factory):
    stack = stack_factory()
    stack.start("ingest")
    client = redis.Redis.from_url(stack.redis_url)
    client.lpush("ingest", b"not json at all")
    client.lpush("ingest", b"\xff\xfe binary \x00")

    def recorded():
        found = incident_rows(stack.database_url, "SELECT task_name, error FROM failed_tasks")
        return found if len(found) >= 2 else None

    failed = wait_for(recorded, 30, what="both entries recorded")
    assert all(f["task_name"] == "(not a task message)" for f in failed)
    assert any("not json at all" in f["error"] for f in failed)
    # The same worker still takes real work.
    stack.send_event({"message": "Database connection failed after hostile entries", "service": "orders"})
    wait_for(lambda: incident_rows(stack.database_url, "SELECT id FROM incidents"), 30, what="the event ingested")
    proc = stack.procs["ingest"][0]
    assert proc.poll() is None
    assert "Unrecoverable error" not in proc.log_path.read_text(errors="replace")
