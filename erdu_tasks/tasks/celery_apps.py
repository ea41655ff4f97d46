"""Watching the team's Celery apps, and sending their failed tasks again: the wiring of monitors.celery_apps.

- `watch` runs one consumer thread per configured app (started by `erdu celery-apps watch`, which
  `erdu up` and compose run as a process of its own). Each thread feeds the app's events to its
  AppWatch and, every `flush_interval`, writes the history rows and reports the folded failures through
  the one ingest entry in one transaction, then hands new incidents on; every `check_interval` it samples
  the queues and steps the worker, stall and backlog conditions (monitors/state.py), and reports overdue
  tasks. A Postgres outage keeps what was not written for the next write.
- `retry` re-publishes a failed task's original message: its name, its args and kwargs exactly as the app's
  result backend held them (with `result_extended`), else as the events recorded them (only when those reprs
  are plain literals, never evaluated), on its recorded queue and routing key (else the app's
  route for the name), under a new task id linked to the old one — claimed by compare-and-set, so a task
  is retried once, with an audit entry either way. `retry_many` does it for a search's results at a rate.
  `plan` says exactly what a retry would send (the console's confirmation shows it).
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg
import redis
import structlog
from celery import Celery

from erdu_tasks import names
from erdu_tasks.errors import PermanentError, TransientError
from erdu_tasks.model import Event
from erdu_tasks.monitors import celery_events
from erdu_tasks.monitors.celery_apps import AppWatch, NotReplayable, recorded_value
from erdu_tasks.monitors.state import observe, report
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings.celery_apps import CeleryApp, CeleryAppsConfig
from erdu_tasks.store import celery_apps as history
from erdu_tasks.tasks.publish import BROKER_ERRORS, hand_on, hand_on_ingested

log = structlog.get_logger("erdu.celery_apps")

PRUNE_EVERY = 600.0
"""Seconds between two retention passes of one watcher."""


def _assess(incident_id: str) -> None:
    hand_on(names.Stage.ASSESS, incident_id)


def _resolved(incident_id: str) -> None:
    hand_on("resolve", incident_id)


@dataclass
class AppRunner:
    """One app's watcher: its AppWatch, its broker client, and when it next writes, checks and prunes."""

    rt: Runtime
    config: CeleryAppsConfig
    app: CeleryApp
    host: str | None = None
    clock: Callable[[], float] = celery_events.wall
    handed: Callable[..., Any] = hand_on_ingested
    """After a commit: (new incident ids, ids to re-assess) are handed on."""
    assess: Callable[[str], Any] = _assess
    resolved: Callable[[str], Any] = _resolved
    watch: AppWatch = field(init=False)
    written: int = 0
    reported: int = 0
    _unsent: list[Event] = field(default_factory=list)
    _next_flush: float = 0.0
    _next_check: float = 0.0
    _next_prune: float = 0.0
    connected: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.watch = AppWatch(self.app, host=self.host, max_arg_chars=self.config.max_arg_chars)
        self._broker = celery_events.broker_client(self.app)
        self._backend = celery_events.backend_client(self.app)
        try:
            with self.rt.db.transaction() as conn:
                self.watch.restore_workers(history.list_workers(conn, self.app.name), self.clock())
        except TransientError as exc:
            log.warning("celery app watcher: workers not restored", app=self.app.name, error=str(exc))

    def on_event(self, event: dict[str, Any]) -> None:
        """One event from the consumer."""
        self.watch.feed(event, self.clock())

    def tick(self) -> None:
        """Write, check and prune when each is due (called by the consumer at least every tick)."""
        now = self.clock()
        try:
            if now >= self._next_flush:
                self._next_flush = now + self.config.flush_interval
                self.flush()
            if now >= self._next_check:
                self._next_check = now + self.config.check_interval
                self.check(now)
            if now >= self._next_prune:
                self._next_prune = now + PRUNE_EVERY
                with self.rt.db.transaction() as conn:
                    history.prune(conn, self.config.retention_days)
        except TransientError as exc:
            log.warning("celery app watcher: outage, kept for the next write", app=self.app.name, error=str(exc))
        except psycopg.Error as exc:   # a write Postgres refuses would be refused again: say so, go on
            log.error("celery app watcher: write refused, batch dropped", app=self.app.name,
                      error=f"{type(exc).__name__}: {exc}"[:500])

    def flush(self) -> None:
        """Write the history rows and report the folded events; on an outage keep them for the next write."""
        rows = self.watch.take_rows()
        events = self._unsent + self.watch.take_events()
        self._unsent = []
        if not rows and not events:
            return
        self._exact_values(rows)
        try:
            with self.rt.db.transaction() as conn:
                history.upsert_tasks(conn, self.app.name, rows)
                result = report(conn, events, self.rt)
        except TransientError:
            self._keep(rows)
            self._unsent = events[-1000:]
            raise
        self.written += len(rows)
        self.reported += len(events)
        self.handed(result.new_incidents, result.to_reassess)

    def _exact_values(self, rows: Sequence[dict[str, Any]]) -> None:
        """Failed and lost tasks' args and kwargs from the app's result backend, where it holds them."""
        wanted = [(r["task_id"], r.get("name")) for r in rows
                  if r.get("state") in history.RETRYABLE_STATES and "args_value" not in r]
        if self._backend is None or not wanted:
            return
        try:
            found = celery_events.recorded_values(self._backend, self.app, wanted[:1000])
        except redis.RedisError as exc:
            log.warning("celery app result backend unreadable: retries use the recorded reprs", app=self.app.name,
                        error=f"{type(exc).__name__}: {exc}"[:300])
            return
        for row in rows:
            if row["task_id"] in found:
                row["args_value"], row["kwargs_value"] = found[row["task_id"]]
                row["values_from"] = "result backend"

    def _keep(self, rows: Sequence[dict[str, Any]]) -> None:
        for old in rows:
            newer = self.watch.rows.get(old["task_id"], {})
            merged = {**old, **newer}
            merged["executions"] = old.get("executions", 0) + newer.get("executions", 0)
            self.watch.rows[old["task_id"]] = merged

    def check(self, now: float) -> None:
        """Sample the queues and step every condition; lost workers' tasks are written at once."""
        try:
            lengths = celery_events.queue_lengths(self._broker, self.app.queues)
        except TransientError as exc:
            log.warning("celery app queues unreadable", app=self.app.name, error=str(exc))
            lengths = {}
        result = self.watch.check(now, lengths)
        self.flush()
        observe(self.rt.db, result.observations, self.rt, self.assess, datetime.fromtimestamp(now, timezone.utc),
                resolved=self.resolved)
        with self.rt.db.transaction() as conn:
            history.save_workers(conn, self.app.name, self.watch.workers.values())
            accepted = report(conn, result.events, self.rt)
        self.handed(accepted.new_incidents, accepted.to_reassess)

    def run(self, stop: threading.Event, *, tick: float = 0.25) -> None:
        """Consume until stop is set, then write what is left."""
        celery_events.consume(self.app, self.on_event, self.tick, stop, tick=tick, on_connected=self.connected.set)
        try:
            self.flush()
        except TransientError as exc:
            log.warning("celery app watcher: last write lost", app=self.app.name, error=str(exc))


def runners(rt: Runtime, config: CeleryAppsConfig, *, only: Sequence[str] = ()) -> list[AppRunner]:
    """One runner per configured app (or per app named in `only`)."""
    host = rt.monitors.host or socket.gethostname()
    unknown = [n for n in only if config.app(n) is None]
    if unknown:
        raise PermanentError(f"no celery app {', '.join(unknown)} in monitors.celery_apps "
                             f"(configured: {', '.join(a.name for a in config.apps)})")
    return [AppRunner(rt, config, a, host) for a in config.apps if not only or a.name in only]


def watch(rt: Runtime, config: CeleryAppsConfig, stop: threading.Event, *, only: Sequence[str] = ()) -> list[AppRunner]:
    """Watch every app, one thread each, until stop is set; returns the runners once all have finished."""
    found = runners(rt, config, only=only)
    threads = [threading.Thread(target=r.run, args=(stop,), name=f"celery-app-{r.app.name}", daemon=True)
               for r in found]
    for t in threads:
        t.start()
    log.info("watching celery apps", apps=[r.app.name for r in found])
    while any(t.is_alive() for t in threads):   # short joins: the caller's signal handlers run in between
        for t in threads:
            t.join(0.5)
    return found


# --------------------------------------------------------------------------- retries


class RetryRefused(PermanentError):
    """A task that cannot be retried: not found, not failed, already retried, or its arguments not literal."""


@dataclass(frozen=True)
class RetryDone:
    """A task sent again."""

    app: str
    task_id: str
    new_id: str
    name: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    values_from: str = "event reprs"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"app": self.app, "task_id": self.task_id, "new_id": self.new_id, "name": self.name,
                "queue": self.queue, "args": self.args, "kwargs": self.kwargs, "values_from": self.values_from}


def replayable(row: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The args and kwargs a retry of this history row sends: the exact values the app's result backend held
    when it failed (`values_from`), else what the events' reprs stand for when they are plain literals;
    RetryRefused saying why when neither is there."""
    if isinstance(row.get("args_value"), list) and isinstance(row.get("kwargs_value"), dict):
        return row["args_value"], row["kwargs_value"]
    try:
        return recorded_value(row.get("args"), kind="args"), recorded_value(row.get("kwargs"), kind="kwargs")
    except NotReplayable as exc:
        raise RetryRefused(f"task {row['task_id']} cannot be retried: its {exc}") from None


@dataclass(frozen=True)
class RetryPlan:
    """What a retry of one task sends: the task name, its recorded values, where to."""

    app: str
    task_id: str
    name: str
    state: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    routing_key: str
    values_from: str = "event reprs"
    """Where args and kwargs come from: "result backend" (exact values) or "event reprs" (plain literals)."""


def plan(app: CeleryApp, row: dict[str, Any]) -> RetryPlan:
    """What retrying this history row would publish; RetryRefused saying why when it may not be retried."""
    task_id = row["task_id"]
    if row["retried_as"]:
        raise RetryRefused(f"task {task_id} was already retried as {row['retried_as']} by {row['retried_by']}")
    if row["state"] not in history.RETRYABLE_STATES or not row["name"]:
        raise RetryRefused(f"task {task_id} is {row['state']}; only {', '.join(history.RETRYABLE_STATES)} "
                           "tasks with a known name are retried")
    args, kwargs = replayable(row)
    queue = row["queue"] or app.queue_for(row["name"])
    return RetryPlan(app.name, task_id, row["name"], row["state"], args, kwargs, queue, row["routing_key"] or queue,
                     row.get("values_from") or "event reprs")


def _client(app: CeleryApp, cache: dict[str, Celery] | None) -> Celery:
    if cache is not None and app.name in cache:
        return cache[app.name]
    client = celery_events.events_app(app)
    if cache is not None:
        cache[app.name] = client
    return client


def retry(rt: Runtime, config: CeleryAppsConfig, app_name: str, task_id: str, *, by: str, note: str | None = None,
          clients: dict[str, Celery] | None = None) -> RetryDone:
    """Send a failed (or lost) task's original message again under a new id; RetryRefused if it may not be."""
    app = config.app(app_name)
    if app is None:
        raise RetryRefused(f"no celery app {app_name!r} in monitors.celery_apps")
    new_id = str(uuid.uuid4())
    try:
        with rt.db.transaction() as conn:
            row = history.get_task(conn, app.name, task_id, for_update=True)
            if row is None:
                raise RetryRefused(f"no task {task_id} of app {app.name} in the history")
            sent = plan(app, row)
            args, kwargs, queue, routing_key = sent.args, sent.kwargs, sent.queue, sent.routing_key
            if not history.claim_retry(conn, app.name, task_id, new_id, by):
                raise RetryRefused(f"task {task_id} was retried by someone else just now")
            try:
                _client(app, clients).send_task(
                    row["name"], args=args, kwargs=kwargs, task_id=new_id, queue=queue, routing_key=routing_key,
                    serializer="json", headers={"erdu_retry_of": task_id})
            except BROKER_ERRORS as exc:
                raise TransientError(f"cannot publish to the broker of {app.name}: {type(exc).__name__}: {exc}") \
                    from exc
            history.record_retry_sent(conn, app.name, row, new_id, queue, (args, kwargs))
            history.record_action(conn, app=app.name, action="retry", target=task_id, by=by, note=note, ok=True,
                                  details={"new_id": new_id, "name": row["name"], "queue": queue,
                                           "routing_key": routing_key, "values_from": sent.values_from})
    except (RetryRefused, TransientError) as exc:
        with rt.db.transaction() as conn:
            history.record_action(conn, app=app.name, action="retry", target=task_id, by=by, note=note, ok=False,
                                  details={"refused": str(exc)[:2000]})
        raise
    return RetryDone(app.name, task_id, new_id, row["name"], queue, args, kwargs, sent.values_from)


def retry_many(rt: Runtime, config: CeleryAppsConfig, query: history.TaskQuery, *, by: str, rate: float,
               note: str | None = None, sleep: Callable[[float], None] = time.sleep
               ) -> list[tuple[str, str, RetryDone | str]]:
    """Retry every not-yet-retried failed task the query finds, at most `rate` per second.

    Returns (app, task id, RetryDone or the reason it was refused) per task, in the order tried."""
    if not rate > 0:
        raise PermanentError("rate must be a positive number of retries per second")
    with rt.db.transaction() as conn:
        found = history.search(conn, query)
    todo = [r for r in found if r["state"] in history.RETRYABLE_STATES and not r["retried_as"]]
    out: list[tuple[str, str, RetryDone | str]] = []
    clients: dict[str, Celery] = {}
    gap = 1.0 / rate
    for n, row in enumerate(todo):
        if n:
            sleep(gap)
        try:
            out.append((row["app"], row["task_id"],
                        retry(rt, config, row["app"], row["task_id"], by=by, note=note, clients=clients)))
        except (RetryRefused, TransientError) as exc:
            out.append((row["app"], row["task_id"], str(exc)))
    return out
