"""A Celery app of "the team", written for the celery_apps tests: ERDU watches it like any app it runs.

Its broker comes from TEAM_BROKER_URL. `orders.charge` records each call's arguments in the broker's Redis
(`team:calls`) and fails while `team:broken` is set; `orders.explode` always fails in the app's own code;
`orders.nap` sleeps (a task to kill a worker under).
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

app = Celery("team", broker=os.environ.get("TEAM_BROKER_URL", "redis://127.0.0.1:6399/0"))
app.conf.update(task_serializer="json", accept_content=["json"], event_serializer="json",
                worker_send_task_events=True, task_send_sent_event=True, task_default_queue="orders",
                worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)


class PaymentDeclined(Exception):
    """The app's own error."""


def _store() -> redis.Redis:
    return redis.Redis.from_url(app.conf.broker_url)


def _validate(order: int) -> None:
    raise PaymentDeclined(f"card declined for order {order}")


@app.task(name="orders.explode")
def explode(order: int) -> None:
    """Always fails, in the app's own frames."""
    _validate(order)


@app.task(name="orders.charge")
def charge(order: int, amount: float, currency: str = "EUR") -> str:
    """Records its arguments; fails while team:broken is set."""
    store = _store()
    store.rpush("team:calls", json.dumps([order, amount, currency]))
    if store.exists("team:broken"):
        _validate(order)
    return "charged"


@app.task(name="orders.nap")
def nap(seconds: float) -> None:
    """Sleeps."""
    time.sleep(seconds)
