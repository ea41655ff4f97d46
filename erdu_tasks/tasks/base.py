"""What every ERDU task shares: retry policy and failure records (the stage hand-off is tasks/publish.py)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from celery import Task, signals
from celery.exceptions import InvalidTaskError
from celery.worker.strategy import default as default_strategy

from erdu_tasks import names
from erdu_tasks.store import incidents as store
from erdu_tasks.app import app
from erdu_tasks.errors import TransientError
from erdu_tasks.runtime import runtime, worker_name

log = structlog.get_logger("erdu.tasks")
T = TypeVar("T")


def backoff(retries: int, *, cap: float) -> float:
    """Exponential backoff with full jitter: 0.5 s, 1 s, 2 s ... capped."""
    return random.uniform(0, min(cap, 0.5 * (2**retries))) + 0.1


class ErduTask(Task):
    """Base task: transient errors retry with backoff; anything that fails for good is recorded."""

    abstract = True
    stage: str | None = None
    Strategy = "erdu_tasks.tasks.base:guarded_strategy"

    def with_retries(self, fn: Callable[[], T]) -> T:
        """Run fn; on TransientError retry this task later (only that error class is retried)."""
        try:
            return fn()
        except TransientError as exc:
            settings = runtime().settings
            if self.request.retries >= settings.task_max_retries:
                raise
            delay = exc.delay if exc.delay is not None else backoff(
                self.request.retries, cap=settings.retry_backoff_max)
            log.warning("transient error, retrying", task=self.name, error=str(exc), delay=round(delay, 2),
                        retries=self.request.retries)
            raise self.retry(exc=exc, countdown=delay, max_retries=settings.task_max_retries) from None

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """Keep the failure in Postgres (not only in the broker or Flower) so it can be retried."""
        incident_id = args[0] if args and isinstance(args[0], str) and args[0].startswith("INC-") else None
        error = f"{exc.__class__.__name__}: {exc}"
        log.error("task failed", task=self.name, incident_id=incident_id, error=error)
        try:
            with runtime().db.transaction() as conn:
                store.record_failed_task(conn, task_id=task_id, task_name=self.name, stage=self.stage,
                                         incident_id=incident_id, error=error,
                                         worker=worker_name(self.request.hostname))
        except Exception as record_exc:  # the database may be the thing that failed
            log.error("could not record failed task", task=self.name, error=str(record_exc))
        if incident_id and self.stage:
            # The errback: a stage that failed for good hands its incident to the escalate task.
            app.send_task(names.ESCALATE, args=(incident_id, error, self.stage),
                          queue=names.Queue.COMMANDER.value, routing_key=names.Queue.COMMANDER.value)


def guarded_strategy(task: Task, app: Any, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
    """Celery's strategy, but a message whose body is JSON of the wrong shape is rejected, not fatal.

    Celery builds the request in the consumer; a body that is not [args, kwargs, embed] raises there
    and stops the whole worker, and a restarted worker meets the same message again.
    """
    handle = default_strategy(task, app, consumer, **kwargs)

    def guarded(message: Any, body: Any, *args: Any, **kw: Any) -> Any:
        try:
            return handle(message, body, *args, **kw)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise InvalidTaskError(f"malformed {task.name} message: {exc.__class__.__name__}: {exc}") from exc

    return guarded


def _record_rejected_message(message: Any, reason: str, *, task_name: str | None = None,
                             task_id: str | None = None) -> None:
    """Keep a message the consumer refused in failed_tasks (`erdu failed ls`), so it is not only a log line."""
    headers = getattr(message, "headers", None) or {}
    info = getattr(message, "delivery_info", None) or {}
    body = getattr(message, "body", b"")
    text = body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)
    error = f"rejected on queue {info.get('routing_key') or '?'}: {reason}; body: {text[:2000]}"
    log.error("message rejected", queue=info.get("routing_key"), reason=reason)
    try:
        with runtime().db.transaction() as conn:
            store.record_failed_task(conn, task_id=str(task_id or headers.get("id") or "-"),
                                     task_name=str(task_name or headers.get("task") or "(not a task message)"),
                                     stage=None, incident_id=None, error=error, worker=None)
    except Exception as exc:  # the consumer must go on even if Postgres is down
        log.error("could not record rejected message", error=str(exc))


@signals.task_rejected.connect
def _on_rejected(sender: Any = None, message: Any = None, exc: BaseException | None = None, **_: Any) -> None:
    _record_rejected_message(message, f"{exc.__class__.__name__}: {exc}" if exc else "not a task message")


@signals.task_unknown.connect
def _on_unknown(sender: Any = None, message: Any = None, name: str | None = None, id: str | None = None,
                **_: Any) -> None:
    _record_rejected_message(message, f"no task named {name!r}", task_name=name, task_id=id)
