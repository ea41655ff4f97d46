"""Celery beat with a Redis lock (celery-redbeat): only one beat schedules, a second one waits."""

from __future__ import annotations

from .names import BEAT_LOCK_KEY, REDBEAT_PREFIX
from .settings import Settings


def configure_beat(celery_app, settings: Settings) -> None:
    """Put the schedule and the redbeat lock settings on the app."""
    from beat_schedule import beat_schedule

    celery_app.conf.update(
        beat_schedule=beat_schedule(settings),
        beat_scheduler="redbeat.RedBeatScheduler",
        redbeat_redis_url=settings.redis_url,
        redbeat_key_prefix=REDBEAT_PREFIX,
        redbeat_lock_key=BEAT_LOCK_KEY,
        redbeat_lock_timeout=30,
        beat_max_loop_interval=5,
    )


def run_beat(settings: Settings, *, loglevel: str = "INFO") -> None:
    """Run beat in the foreground."""
    from .app import app as celery_app

    configure_beat(celery_app, settings)
    celery_app.conf.include = []   # beat publishes tasks by name; it needs none of their code
    celery_app.start(["beat", "-l", loglevel, "-S", "redbeat.RedBeatScheduler", "--max-interval", "5"])
