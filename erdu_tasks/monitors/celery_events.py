"""The long-running consumer of one Celery app's events, as Flower's: Celery's event receiver on the app's broker.

`consume` runs until `stop` is set: it connects, subscribes to the app's event exchange (`celeryev`), hands
every event to `on_event` and calls `on_tick` at least every `tick` seconds (also while no event arrives),
and reconnects with a capped backoff when the broker goes away. The broker is untrusted: events are
accepted as JSON only, and an event `on_event` cannot take is counted, not fatal.

`queue_lengths` reads the watched queues' lengths straight from the broker's Redis (every priority list);
`recorded_values` reads failed tasks' exact args and kwargs from the app's Redis result backend.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
import structlog
from celery import Celery

from erdu_tasks.monitors.celery_health import queue_lengths as _lengths
from erdu_tasks.settings.celery_apps import CeleryApp

log = structlog.get_logger("erdu.celery_apps")

MAX_BACKOFF = 10.0


def events_app(app: CeleryApp) -> Celery:
    """A bare Celery client of the watched app's broker: JSON only, never the current app."""
    client = Celery(f"erdu-watch-{app.name}", broker=app.broker_url, set_as_current=False)
    client.conf.update(accept_content=["json"], event_serializer="json", task_serializer="json",
                       broker_connection_retry_on_startup=False, broker_connection_max_retries=1,
                       event_queue_expires=60.0, event_queue_ttl=10.0, worker_hijack_root_logger=False)
    return client


def consume(app: CeleryApp, on_event: Callable[[dict[str, Any]], None], on_tick: Callable[[], None],
            stop: threading.Event, *, tick: float = 0.25, client: Celery | None = None,
            on_connected: Callable[[], None] | None = None) -> None:
    """Feed the app's events to on_event until stop is set, reconnecting after any broker failure."""
    client = client or events_app(app)
    backoff = 0.5

    def handle(event: dict[str, Any]) -> None:
        try:
            on_event(event)
        except Exception as exc:   # one bad event must not stop the consumer; it is logged and skipped
            log.warning("celery event skipped", app=app.name, error=f"{type(exc).__name__}: {exc}"[:300])

    while not stop.is_set():
        try:
            with client.connection_for_read() as conn:
                conn.ensure_connection(max_retries=1)
                receiver = client.events.Receiver(conn, handlers={"*": handle})
                receiver.should_stop = False

                drains = [0]

                def iteration() -> None:   # called before each drain of the connection
                    if stop.is_set():
                        receiver.should_stop = True
                    # kombu subscribes to the events' fanout channel in the first drain, and Redis keeps no
                    # message for a channel nobody listens to: "connected" only once that drain has run.
                    if drains[0] == 1 and on_connected is not None:
                        on_connected()
                    drains[0] += 1
                    on_tick()

                receiver.on_iteration = iteration
                log.info("watching celery events", app=app.name)
                for _ in receiver.consume(limit=None, timeout=None, safety_interval=tick):
                    if stop.is_set():
                        break
                    backoff = 0.5
        except Exception as exc:   # the broker went away (or refused us): wait, then connect again
            if stop.is_set():
                break
            log.warning("celery event consumer reconnecting", app=app.name, in_seconds=backoff,
                        error=f"{type(exc).__name__}: {exc}"[:300])
            on_tick()
            stop.wait(backoff)
            backoff = min(MAX_BACKOFF, backoff * 2)


def broker_client(app: CeleryApp) -> redis.Redis:
    """A Redis client of the app's broker, for queue lengths and queue actions."""
    return redis.Redis.from_url(app.broker_url, socket_timeout=5, socket_connect_timeout=5)


def queue_lengths(client: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each queue of the app's broker (TransientError when it cannot be read)."""
    return _lengths(client, queues)


MAX_RESULT_BYTES = 1_000_000
"""A result-backend entry larger than this is not read for its values."""


def backend_client(app: CeleryApp) -> redis.Redis | None:
    """A Redis client of the app's result backend, or None when none is configured."""
    if not app.result_backend_url:
        return None
    return redis.Redis.from_url(app.result_backend_url, socket_timeout=5, socket_connect_timeout=5)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON Postgres stores")


def recorded_values(client: redis.Redis, app: CeleryApp, tasks: Iterable[tuple[str, str | None]]
                    ) -> dict[str, tuple[list[Any], dict[str, Any]]]:
    """task id -> (args, kwargs) exactly as the result backend holds them, for (task id, name) pairs.

    Only entries Celery wrote with `result_extended` in JSON are taken: a dict naming the same task (when it
    names one) with a list of args and a dict of kwargs. Anything else (pickle, a plain result, NUL, NaN,
    over MAX_RESULT_BYTES) is left out, so the retry falls back to the events' reprs. Raises redis errors."""
    pairs = list(tasks)
    if not pairs:
        return {}
    raw = client.mget([f"{app.result_key_prefix}{task_id}" for task_id, _ in pairs])
    out: dict[str, tuple[list[Any], dict[str, Any]]] = {}
    for (task_id, name), value in zip(pairs, raw):
        if not isinstance(value, bytes) or len(value) > MAX_RESULT_BYTES or b"\\u0000" in value:
            continue
        try:
            meta = json.loads(value, parse_constant=_refuse_constant)
        except (ValueError, RecursionError):
            continue
        if not isinstance(meta, dict) or meta.get("task_id") not in (None, task_id):
            continue
        if name and meta.get("name") not in (None, name):
            continue
        args, kwargs = meta.get("args"), meta.get("kwargs")
        if isinstance(args, list) and isinstance(kwargs, dict):
            out[task_id] = (args, kwargs)
    return out


def wall() -> float:
    """Now, in seconds since the epoch (one clock for every decision of the watcher)."""
    return time.time()
