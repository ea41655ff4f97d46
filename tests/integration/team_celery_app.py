"""A Celery app of "the team", written for the celery_apps tests: ERDU watches it like any app it runs.

Its broker comes from TEAM_BROKER_URL, its result backend (result_extended: the exact args of each result)
is database 2 of the same Redis. `orders.charge` records each call's arguments in the broker's Redis
(`team:calls`) and fails while `team:broken` is set; `orders.batch` does the same with one list argument;
`orders.explode` always fails in the app's own code and stores no result; `orders.nap` sleeps (a task to
kill a worker under); `orders.pack`, `orders.label`, `orders.ship` and `orders.total` are workflow steps. The app announces
its chains' and chords' next steps to ERDU (client/celery_workflows.py).
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery

from erdu_tasks.client.celery_workflows import announce_next_steps

_BROKER = os.environ.get("TEAM_BROKER_URL", "redis://127.0.0.1:6399/0")
app = Celery("team", broker=_BROKER, backend=_BROKER.rsplit("/", 1)[0] + "/2")
announce_next_steps(app)
app.conf.update(task_serializer="json", accept_content=["json"], event_serializer="json",
                result_serializer="json", result_extended=True,
                worker_send_task_events=True, task_send_sent_event=True, task_default_queue="orders",
                worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True,
                worker_hijack_root_logger=False)


class PaymentDeclined(Exception):
    """The app's own error."""


def _store() -> redis.Redis:
    return redis.Redis.from_url(app.conf.broker_url)


def _validate(order: int) -> None:
    raise PaymentDeclined(f"card declined for order {order}")


@app.task(name="orders.explode", ignore_result=True)
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


@app.task(name="orders.batch")
def batch(items: list) -> int:
    """Records its list; fails while team:broken is set."""
    store = _store()
    store.rpush("team:calls", json.dumps(items))
    if store.exists("team:broken"):
        _validate(len(items))
    return len(items)


@app.task(name="orders.pack")
def pack(order: int) -> int:
    """A first step."""
    return order


@app.task(name="orders.ship")
def ship(order: int) -> str:
    """A next step."""
    return f"shipped {order}"


@app.task(name="orders.total")
def total(parts: list) -> int:
    """A chord's body."""
    return sum(parts)


@app.task(name="orders.label")
def label(order: int) -> int:
    """A step ERDU knows by name is followed by orders.ship (`followed_by`)."""
    return order
