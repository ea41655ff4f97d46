"""A message a dead worker took goes back to its queue within a stage deadline: kombu's unacked hash on a
real Redis, the reconciler's restore (celery_ext/orphans.py), no worker alive to claim it."""

from __future__ import annotations

import json
import time

import redis

from erdu_tasks.celery_ext.orphans import held_task_ids, restore_orphans
from tests.conftest import RedisServer


def test_an_old_message_no_live_worker_holds_goes_back_and_a_recent_one_stays(tmp_path):
    from erdu_tasks.app import make_celery
    from erdu_tasks.settings import load_settings

    server = RedisServer(tmp_path / "redis")
    try:
        app = make_celery(load_settings(redis_url=server.url))
        client = redis.Redis.from_url(server.url)
        sent = [app.send_task("erdu.ingest", args=({"message": f"event {i}"},), queue="ingest").id for i in (1, 2)]
        with app.connection_for_read() as conn:   # a consumer that takes both and dies before acking
            channel = conn.channel()
            taken = [channel.basic_get("ingest", no_ack=False) for _ in sent]
            assert all(taken) and client.llen("ingest") == 0 and client.hlen("unacked") == 2
            old = taken[0].delivery_tag
            client.zadd("unacked_index", {old: time.time() - 100})   # delivered 100 s ago

            assert restore_orphans(app, older_than=20, reply_seconds=0.2) == 1
            assert client.hlen("unacked") == 1 and client.llen("ingest") == 1
            back = json.loads(client.lindex("ingest", 0))
            assert back["headers"]["id"] == sent[0]
            assert restore_orphans(app, older_than=20, reply_seconds=0.2) == 0   # the recent one is not touched
    finally:
        server.stop()


def test_the_tasks_live_workers_report_are_held():
    replies = [{"all@host-1": [{"id": "a"}]}, {"all@host-1": [{"id": "b"}], "all@host-2": []},
               {"all@host-2": [{"eta": "2026-01-01T00:00:00", "request": {"id": "c"}}]}, None,
               {"hostile@x": ["not a request", {"id": 7}]}]
    assert held_task_ids(replies) == {"a", "b", "c"}
