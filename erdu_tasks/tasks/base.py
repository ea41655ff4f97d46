"""What every ERDU task shares: retry policy, failure records and the stage hand-off."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, TypeVar

import structlog
from celery import Task

from .. import names, store
from ..app import app
from ..errors import TransientError
from ..runtime import runtime, worker_name

log = structlog.get_logger("erdu.tasks")
T = TypeVar("T")


def backoff(retries: int, *, cap: float) -> float:
    """Exponential backoff with full jitter: 0.5 s, 1 s, 2 s ... capped."""
    return random.uniform(0, min(cap, 0.5 * (2**retries))) + 0.1


class ErduTask(Task):
    """Base task: transient errors retry with backoff; anything that fails for good is recorded."""

    abstract = True
    stage: str | None = None

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


def send_stage(stage: str, incident_id: str, *, countdown: float | None = None) -> None:
    """Publish the next stage on its own queue (set explicitly: the publisher may be another role's worker)."""
    task_name, queue = names.STAGES[stage]
    app.send_task(task_name, args=(incident_id,), queue=queue.value, routing_key=queue.value,
                  countdown=countdown)
