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


def test_a_broker_client_can_look_but_not_steer_or_read_the_settings(stack_factory):
    token = "api-write-token-that-must-not-leak"
    stack = stack_factory({"ERDU_API_TOKEN": token, "ERDU_BRAIN__API_KEY": "model-key-that-must-not-leak"})
    worker = stack.start("commander")
    control = stack.client.control
    assert control.ping(timeout=5), "ERDU's Celery health monitor pings workers"
    assert control.inspect(timeout=5).stats(), "Flower's dashboard reads stats"
    assert control.inspect(timeout=5).active_queues()
    assert not control.inspect(timeout=3).conf(), "the configuration is not for broker clients"
    for command, arguments in (("rate_limit", {"task_name": "erdu.assess", "rate_limit": "1/h"}),
                               ("pool_restart", {}), ("revoke", {"task_id": "x", "terminate": True}),
                               ("shutdown", {})):
        control.broadcast(command, arguments=arguments)
    assert control.ping(timeout=5), "the worker is still up after a shutdown broadcast"
    assert worker.poll() is None
    log = worker.log_path.read_text(errors="replace")
    assert "remote control command refused" in log and token not in log


def test_the_celery_configuration_holds_no_secret():
    from erdu_tasks.app import make_celery
    from erdu_tasks.settings import load_settings

    secret = "s3cr3t-token-value"
    app = make_celery(load_settings(api_token=secret, api_read_token=secret + "-read",
                                    database_url=f"postgresql://erdu:{secret}@127.0.0.1:5432/erdu"))
    shown = repr(app.conf.table(with_defaults=True))
    assert secret not in shown
    assert app.erdu_settings.api_token == secret or getattr(app.erdu_settings.api_token, "get_secret_value",
                                                            lambda: None)() == secret
