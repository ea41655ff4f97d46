"""ERDU's Redis transport against a real redis-server that dies under a consumer holding a message."""

from __future__ import annotations

import pytest
from kombu import Connection, Exchange, Queue
from redis.exceptions import ConnectionError as RedisConnectionError

from erdu_tasks.celery_ext import broker
from tests.conftest import RedisServer


@pytest.fixture()
def doomed_redis(tmp_path):
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


def held_message(url: str):
    """A consumer with prefetch 1 on ERDU's transport, holding one delivered, unacknowledged message."""
    broker.install()
    queue = Queue("held", Exchange("held", type="direct"), routing_key="held")
    conn = Connection(url)
    channel = conn.channel()
    channel.basic_qos(0, 1, False)
    conn.Producer(channel).publish({"incident": "INC-1"}, exchange=queue.exchange, routing_key="held",
                                   declare=[queue])
    got = []
    conn.Consumer(queue, callbacks=[lambda body, message: got.append(message)], channel=channel).consume()
    conn.drain_events(timeout=5)
    assert len(got) == 1 and not channel.qos.can_consume()   # the one slot is taken
    return conn, channel, got[0]


@pytest.mark.parametrize("settle", ["ack", "reject", "requeue"])
def test_a_settle_the_dead_broker_never_got_still_frees_the_prefetch_slot(doomed_redis, settle):
    conn, channel, message = held_message(doomed_redis.url)
    try:
        assert isinstance(channel.qos, broker.QoS)
        doomed_redis.proc.kill()
        doomed_redis.proc.wait(10)
        with pytest.raises(RedisConnectionError):   # the caller still hears that the broker did not get it
            if settle == "ack":
                message.ack()
            else:
                message.reject(requeue=settle == "requeue")
        # Without this the consumer would count the message as in flight forever and never poll again.
        assert channel.qos.can_consume()
        assert len(channel.qos._delivered) - len(channel.qos._dirty) == 0
    finally:
        conn.release()


def test_an_ack_the_broker_got_removes_the_message_from_its_unacked_set(doomed_redis):
    import redis

    conn, channel, message = held_message(doomed_redis.url)
    try:
        client = redis.Redis.from_url(doomed_redis.url)
        assert client.hlen("unacked") == 1
        message.ack()
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
        assert channel.qos.can_consume()
    finally:
        conn.release()
