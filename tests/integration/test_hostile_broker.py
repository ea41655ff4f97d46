"""The broker is untrusted input: queue entries that are not Celery messages, not even JSON, are recorded and skipped."""

from __future__ import annotations

import base64
import json
import os
import pickle
import shlex
import textwrap
import uuid
from pathlib import Path

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
    # One worker answers: limit=1 returns on its reply instead of waiting out the timeout.
    assert control.ping(timeout=5, limit=1), "ERDU's Celery health monitor pings workers"
    assert control.inspect(timeout=5, limit=1).stats(), "Flower's dashboard reads stats"
    assert control.inspect(timeout=5, limit=1).active_queues()
    assert not control.inspect(timeout=2).conf(), "the configuration is not for broker clients"
    for command, arguments in (("rate_limit", {"task_name": "erdu.assess", "rate_limit": "1/h"}),
                               ("pool_restart", {}), ("revoke", {"task_id": "x", "terminate": True}),
                               ("shutdown", {})):
        control.broadcast(command, arguments=arguments)
    assert control.ping(timeout=5, limit=1), "the worker is still up after a shutdown broadcast"
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


# ================================================================== canaries: hostile entries on every role queue

ROLE_TASKS = {"ingest": "erdu.ingest", "commander": "erdu.assess", "diagnostician": "erdu.diagnose",
              "fixer": "erdu.fix", "resolver": "erdu.resolve"}
CANARY_RUNBOOK = textwrap.dedent("""
    runbooks:
      - name: canary-noop
        match: {service: canary}
        actions: [{action: noop}]
        validation: {check: noop}
        limits: {max_runs: 100, per_seconds: 3600}
""")
BIG = 5 * 1024 * 1024
DEEP = 100_000
MAX_LOG_LINE = 64 * 1024


class _PickleCanary:
    """Unpickling this runs os.system(touch CANARY): proof that pickle was deserialized."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.path)}",))


def _envelope(queue: str, body: bytes, content_type: str, *, encoding: str = "binary") -> bytes:
    """A well-formed kombu/Celery protocol 2 envelope on `queue` whose body is `body` as `content_type`."""
    task_id = str(uuid.uuid4())
    return json.dumps({
        "body": base64.b64encode(body).decode(), "content-encoding": encoding, "content-type": content_type,
        "headers": {"lang": "py", "task": ROLE_TASKS[queue], "id": task_id, "root_id": task_id, "parent_id": None,
                    "group": None, "retries": 0, "eta": None, "expires": None, "timelimit": [None, None],
                    "argsrepr": "()", "kwargsrepr": "{}", "origin": "hostile@producer"},
        "properties": {"correlation_id": task_id, "delivery_mode": 2, "delivery_tag": task_id, "priority": 0,
                       "body_encoding": "base64", "delivery_info": {"exchange": "erdu", "routing_key": queue}},
    }).encode()


def _hostile_entries(queue: str, canary: Path) -> dict[str, bytes]:
    nested = b"[" * DEEP + b"]" * DEEP
    yaml_bomb = f'!!python/object/apply:os.system ["touch {canary}"]'.encode()
    return {
        "oversized": json.dumps({"junk": "x" * BIG}).encode(),
        "oversized-body": _envelope(queue, json.dumps([["x" * BIG], {}, {}]).encode(), "application/json",
                                    encoding="utf-8"),
        "nested": nested,
        "nested-body": _envelope(queue, b"[" + nested + b", {}, {}]", "application/json", encoding="utf-8"),
        "pickle": _envelope(queue, pickle.dumps(((_PickleCanary(str(canary)),), {}, {})),
                            "application/x-python-serialize"),
        "yaml": _envelope(queue, yaml_bomb, "application/x-yaml", encoding="utf-8"),
    }


@pytest.fixture(scope="module")
def shared(module_stack_factory, tmp_path_factory):
    runbooks = tmp_path_factory.mktemp("canary-runbooks")
    (runbooks / "canary.yaml").write_text(CANARY_RUNBOOK)
    stack = module_stack_factory({"ERDU_RUNBOOKS_DIR": str(runbooks)})
    stack.start_all()
    return stack


def test_hostile_entries_on_every_role_queue_are_recorded_and_the_workers_serve_on(shared, tmp_path):
    stack = shared
    canary = tmp_path / "canary"
    client = redis.Redis.from_url(stack.redis_url)
    sent = 0
    for queue in ROLE_TASKS:
        for kind, entry in _hostile_entries(queue, canary).items():
            client.lpush(queue, entry)
            sent += 1

    def recorded():
        rows = incident_rows(stack.database_url, "SELECT task_name, error FROM failed_tasks")
        return rows if len(rows) >= sent else None

    rows = wait_for(recorded, 60, 0.5, what=f"all {sent} hostile entries recorded")
    assert all(r["error"] and "rejected on queue" in r["error"] for r in rows), [r["error"][:200] for r in rows]
    for reason in ("oversized", "nested", "x-python-serialize", "x-yaml"):
        assert any(reason in r["error"] for r in rows), reason
    assert all(len(r["error"]) < 8192 for r in rows)
    assert not canary.exists(), "a hostile payload was deserialized"

    # Every worker is alive and the pipeline still closes an incident.
    for role, procs in stack.procs.items():
        assert all(p.poll() is None for p in procs), role
    stack.send_event({"message": "Canary check failed after hostile entries", "service": "canary"})
    wait_for(lambda: incident_rows(stack.database_url, "SELECT id FROM incidents WHERE status = 'closed'"), 60,
             what="an incident closed after the hostile entries")
    for procs in stack.procs.values():
        for proc in procs:
            text = proc.log_path.read_text(errors="replace")
            assert "Unrecoverable error" not in text
            longest = max((len(line) for line in text.splitlines()), default=0)
            assert longest < MAX_LOG_LINE, f"{proc.log_path.name}: a {longest}-character log line"
    stack.clear()


def test_the_transport_does_not_decode_an_oversized_or_too_deeply_nested_entry():
    """Pure decoding, no broker: what the worker gets instead of a RecursionError or a 5 MB parse."""
    nested = broker.lenient_loads(b"[" * DEEP + b"]" * DEEP)
    assert nested[broker.FOREIGN_KEY].startswith("entry nested too deeply to decode")
    oversized = broker.lenient_loads(b'{"a": "' + b"x" * BIG + b'"}')
    assert oversized[broker.FOREIGN_KEY].startswith("oversized entry: ")
    assert len(oversized[broker.FOREIGN_KEY]) < 2000
    # The envelope around a long foreign entry still carries valid JSON, so the consumer can reject it.
    wrapped = broker.wrap({"junk": "x" * BIG}, "ingest")
    assert len(wrapped["body"]) <= broker.MAX_FOREIGN_CHARS and broker.FOREIGN_KEY in json.loads(wrapped["body"])
