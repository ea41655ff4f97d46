"""The README's producer-only Redis user: it may push events onto `ingest`, and nothing else."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT, RedisServer, incident_rows, wait_for

PRODUCER_PASSWORD = "producer-secret"
# The same line the README's security section shows.
PRODUCER_ACL = f"producer on >{PRODUCER_PASSWORD} resetkeys ~ingest resetchannels -@all +lpush +select +ping +hello +auth"


@pytest.fixture()
def acl_redis(tmp_path):
    server = RedisServer(tmp_path / "redis-acl", extra_args=("--user", *PRODUCER_ACL.split()))
    yield server
    server.stop()


def producer_url(server: RedisServer) -> str:
    return f"redis://producer:{PRODUCER_PASSWORD}@127.0.0.1:{server.port}/0"


def test_the_readme_shows_the_producer_acl_line():
    assert PRODUCER_ACL.replace(PRODUCER_PASSWORD, "CHANGE-ME") in (ROOT / "README.md").read_text()


def test_a_producer_only_user_can_enqueue_events_but_not_read_or_broadcast(acl_redis, stack_factory):
    stack = stack_factory(redis_url=acl_redis.url)
    stack.start("ingest")
    sent = subprocess.run(["sh", str(Path(ROOT) / "examples" / "redis-lpush.sh"),
                           '{"message": "Disk full on /var/data", "service": "files", "source": "cron"}'],
                          env={**os.environ, "ERDU_REDIS_URL": producer_url(acl_redis)},
                          capture_output=True, text=True, timeout=30)
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: incident_rows(stack.database_url, "SELECT id FROM incidents WHERE service = 'files'"), 30,
             what="the producer's event ingested")

    producer = redis.Redis.from_url(producer_url(acl_redis))
    admin = redis.Redis.from_url(acl_redis.url)
    admin.set("erdu:secret-ish", "not for producers")
    refused = {
        "read another key": lambda: producer.get("erdu:secret-ish"),
        "list keys": lambda: producer.keys("*"),
        "read the ingest queue": lambda: producer.lrange("ingest", 0, -1),
        "take from the ingest queue": lambda: producer.rpop("ingest"),
        "push onto a role queue": lambda: producer.lpush("commander", "x"),
        "broadcast a control command": lambda: producer.publish("/0.celery.pidbox", "shutdown"),
        "delete the queue": lambda: producer.delete("ingest"),
        "read the configuration": lambda: producer.config_get("*"),
    }
    for what, attempt in refused.items():
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
            pytest.fail(f"the producer could {what}")
    assert admin.get("erdu:secret-ish") == b"not for producers"
    assert stack.procs["ingest"][0].poll() is None
