"""Celery beat with a Redis lock (celery-redbeat): only one beat schedules, a second one waits."""

from __future__ import annotations

import logging

from celery import Celery
from redbeat import RedBeatScheduler
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError

from erdu_tasks.names import BEAT_LOCK_KEY, REDBEAT_PREFIX
from erdu_tasks.settings import Settings

SCHEDULER = f"{__name__}:Scheduler"
log = logging.getLogger("erdu.beat")


class Scheduler(RedBeatScheduler):
    """redbeat's scheduler, except that a Redis outage pauses beat instead of ending it.

    redbeat extends its lock on every tick; when Redis is gone the extension raises and beat exits, and
    a restarted beat then waits out the old lock's timeout before the reconciler runs again. Here beat
    keeps its place: it retries every second, and when Redis is back it extends the lock it still holds,
    or takes it back with its own token if Redis lost it (and writes the schedule again if Redis lost
    that too). If another beat holds it by then, this one
    stops, as redbeat would: only one beat ever schedules.
    """

    outage_retry_seconds = 1.0
    _in_outage = False

    def tick(self, *args, **kwargs):
        try:
            if self._in_outage:
                self._restore_schedule()
            interval = super().tick(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if not self._in_outage:
                log.warning("beat: Redis unreachable (%s); scheduling paused, retrying every %.0f s",
                            exc, self.outage_retry_seconds)
                self._in_outage = True
            return self.outage_retry_seconds
        except LockError:
            if not self._reclaim_lock():
                raise
            return 0
        if self._in_outage:
            log.warning("beat: Redis is back; scheduling resumed")
            self._in_outage = False
        return interval

    def _restore_schedule(self) -> None:
        """A Redis that came back empty forgot the schedule too: write the static entries again."""
        from redbeat.schedulers import get_redis

        if not get_redis(self.app).exists(self.app.redbeat_conf.schedule_key):
            self.setup_schedule()
            log.warning("beat: Redis came back without the schedule; wrote it again")

    def _reclaim_lock(self) -> bool:
        """The lock expired or Redis lost it: take it again with our token, unless another beat has it."""
        lock = getattr(self, "lock", None)
        token = getattr(getattr(lock, "local", None), "token", None)
        if lock is None or token is None:
            return False
        try:
            taken = bool(lock.acquire(blocking=False, token=token))
        except (RedisConnectionError, RedisTimeoutError):
            return False
        if taken:
            log.warning("beat: took its lock back after losing it")
        else:
            log.error("beat: another beat holds the lock now; this one stops")
        return taken

    def close(self):
        try:
            super().close()
        except (RedisConnectionError, RedisTimeoutError):
            self.lock = None   # Redis is gone: the lock expires by itself


def configure_beat(celery_app, settings: Settings) -> None:
    """Put the schedule and the redbeat lock settings on the app."""
    from beat_schedule import beat_schedule

    from erdu_tasks.celery_ext.broker import broker_url, without_password
    from erdu_tasks.redisconn import is_sentinel, redis_client

    url = str.__str__(settings.redis_url)
    if without_password(url) != url or is_sentinel(url):
        # The lock's client is built here (with the password; through the sentinels, which redbeat's own
        # redis-sentinel:// URLs would need spelled out again in redbeat_redis_options), so app.conf holds the
        # URL without the password.
        import ssl

        extras: dict = {"ssl_cert_reqs": ssl.CERT_REQUIRED} if url.startswith("rediss") else {}
        celery_app.redbeat_redis = redis_client(url, decode_responses=True, **extras)
    celery_app.conf.update(
        beat_schedule=beat_schedule(settings),
        beat_scheduler=SCHEDULER,
        redbeat_redis_url=without_password(broker_url(url)[0]),
        redbeat_key_prefix=REDBEAT_PREFIX,
        redbeat_lock_key=BEAT_LOCK_KEY,
        redbeat_lock_timeout=settings.beat_lock_seconds,
        beat_max_loop_interval=tick_seconds(settings),
    )


def tick_seconds(settings: Settings) -> int:
    """Beat wakes (and renews its lock, and a standby retries it) at least this often: a fifth of the lock."""
    return max(1, settings.beat_lock_seconds // 5)


def run_beat(celery_app: Celery, settings: Settings, *, loglevel: str = "INFO") -> None:
    """Run beat for the given app in the foreground."""
    configure_beat(celery_app, settings)
    celery_app.conf.include = []   # beat publishes tasks by name; it needs none of their code
    from erdu_tasks.celery_ext.start import run_beat as start_beat

    start_beat(celery_app, loglevel=loglevel, scheduler=SCHEDULER, max_interval=tick_seconds(settings))
