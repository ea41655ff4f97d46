"""The consumer guard: a worker that stops taking work while work waits for it reconnects to the broker.

After a broker crash, kombu's Redis transport can leave a worker up and connected but no longer
polling its queues (a settle that never reached the broker, a reply lost between the old connection
and the new one). Nothing fails and nothing is logged: the worker simply stops consuming, and
incidents wait in the queue until someone restarts it. The guard runs in the worker's event loop and
watches for exactly that: messages waiting in the worker's queues, no task of its own received or
running, and no task started, for `ERDU_CONSUMER_STALL_SECONDS`. Then it raises a connection error in
the event loop, which Celery handles like a lost broker connection: it hands back what it held and
reconnects with fresh channels. A healthy worker never meets the condition, because a waiting
message reaches an idle worker within milliseconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
import structlog
from celery import bootsteps, signals
from celery.worker import state
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from erdu_tasks.redisconn import redis_client

log = structlog.get_logger("erdu.consumer_guard")

PRIORITY_SEP = "\x06\x16"
"""kombu's Redis transport keeps priority 3/6/9 messages in `<queue>\\x06\\x16<priority>` lists."""


class ConsumerStalled(RedisConnectionError):
    """Raised in the worker's event loop: Celery takes it for a lost connection and reconnects."""


@dataclass
class Watch:
    """What the guard has seen since the worker last looked healthy."""

    stall_seconds: float
    idle_since: float | None = None
    started_then: int = 0

    def observe(self, *, waiting: int, held: int, started: int, now: float) -> bool:
        """One look; True when work has waited for an idle worker that started nothing for stall_seconds."""
        if waiting == 0 or held > 0 or started != self.started_then:
            self.idle_since = None
            self.started_then = started
            return False
        if self.idle_since is None:
            self.idle_since = now
            return False
        return now - self.idle_since >= self.stall_seconds


def queue_keys(queues: list[str]) -> list[str]:
    """The Redis lists behind the worker's queues, priority lists included."""
    return [key for q in queues for key in (q, *(f"{q}{PRIORITY_SEP}{p}" for p in (3, 6, 9)))]


def record_decode_errors(consumer) -> None:
    """A message whose body cannot be decoded (nested too deeply, bad base64...) is rejected like any other.

    Celery logs it and acks it in `on_decode_error`, without the `task_rejected` signal its other
    rejections send, so it would leave no record but a log line; here it sends the signal too, and the
    rejection is kept in failed_tasks (erdu_tasks/tasks/base.py) with its reason.
    """
    original = consumer.on_decode_error
    if getattr(original, "erdu_recorded", False):
        return

    def on_decode_error(message, exc) -> None:
        try:
            original(message, exc)
        finally:
            signals.task_rejected.send(sender=consumer, message=message, exc=exc)

    on_decode_error.erdu_recorded = True
    consumer.on_decode_error = on_decode_error


class ConsumerGuard(bootsteps.StartStopStep):
    """A consumer bootstep: checks every few seconds, from the event loop, that waiting work is taken."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent, **kwargs) -> None:
        record_decode_errors(parent)
        settings = parent.app.erdu_settings
        self.stall_seconds = float(settings.consumer_stall_seconds)
        self.interval = max(1.0, min(5.0, self.stall_seconds / 3))
        self.tref = None
        self.client: redis.Redis | None = None
        self.watch = Watch(self.stall_seconds)

    def start(self, parent) -> None:
        redis_broker = parent.app.conf.broker_url.startswith(("redis", "sentinel"))
        if not self.stall_seconds or parent.timer is None or not redis_broker:
            return
        self.watch = Watch(self.stall_seconds, started_then=state.all_total_count[0])
        if self.client is None:
            # The settings hold the password, which app.conf does not (celery_ext/broker.py).
            url = str(getattr(parent.app, "erdu_settings", None) and parent.app.erdu_settings.redis_url
                      or parent.app.conf.broker_url)
            self.client = redis_client(url, socket_timeout=2, socket_connect_timeout=2)
        self.tref = parent.timer.call_repeatedly(self.interval, self.check, (parent,), priority=10)

    def stop(self, parent) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def shutdown(self, parent) -> None:
        self.stop(parent)
        if self.client is not None:
            self.client.close()
            self.client = None

    def check(self, parent) -> None:
        queues = [q.name for q in parent.task_consumer.queues] if parent.task_consumer else []
        if not queues or self.client is None:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in queue_keys(queues):
                pipe.llen(key)
            waiting = sum(pipe.execute())
        except RedisError:
            return   # the broker itself is away: Celery's own reconnect handles that
        now = time.monotonic()
        if self.watch.observe(waiting=waiting, held=len(state.reserved_requests),
                              started=state.all_total_count[0], now=now):
            log.error("consumer stalled: work waits and this worker takes none; reconnecting to the broker",
                      waiting=waiting, queues=queues, idle_seconds=round(now - (self.watch.idle_since or now), 1))
            self.watch = Watch(self.stall_seconds, started_then=state.all_total_count[0])
            raise ConsumerStalled(f"no message taken from {', '.join(queues)} for {self.stall_seconds:.0f} s "
                                  f"while {waiting} waited")
