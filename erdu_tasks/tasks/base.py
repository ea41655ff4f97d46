"""What every ERDU task shares: retry policy, failure records and the stage runner (the hand-off is tasks/publish.py)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import psycopg
import structlog
from celery import Task, signals
from celery.exceptions import InvalidTaskError
from celery.worker.strategy import default as default_strategy

from erdu_tasks import names
from erdu_tasks.store import incidents as store
from erdu_tasks.store.reconcile import kept
from erdu_tasks.errors import PermanentError, TransientError
from erdu_tasks.model import INCIDENT_ID
from erdu_tasks.escalation.start import escalate
from erdu_tasks.model import Incident
from erdu_tasks.names import Stage
from erdu_tasks.app import runtime
from erdu_tasks.runtime import Runtime, worker_name
from erdu_tasks.tasks.publish import hand_on, publish

log = structlog.get_logger("erdu.tasks")
T = TypeVar("T")


def backoff(retries: int, *, cap: float) -> float:
    """Exponential backoff with full jitter: 0.5 s, 1 s, 2 s ... capped."""
    return random.uniform(0, min(cap, 0.5 * (2**retries))) + 0.1


class ErduTask(Task):
    """Base task: transient errors retry with backoff; anything that fails for good is recorded."""

    abstract = True
    stage: Stage | None = None
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
            # A broker that refuses it leaves the incident in its stage: the reconciler re-drives it.
            publish(names.ESCALATE, (incident_id, error, self.stage), queue=names.Queue.COMMANDER)


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
    text = body[:8000].decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else str(body)[:8000]
    # Postgres text cannot hold NUL; a pickle or binary body has them.
    text = text.replace("\x00", "\\x00")
    error = f"rejected on queue {info.get('routing_key') or '?'}: {reason[:500]}; body: {text[:2000]}"
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


# ---- the stage runner ------------------------------------------------------------------------

V = TypeVar("V")


@dataclass(frozen=True)
class Outside(Generic[V]):
    """What a stage still has to do after its first transaction: act outside any transaction, then settle.

    The fix returns one: its actions may take minutes and must not hold the incident's row lock; `settle`
    runs in a second transaction, with the act's result, and returns the next stage.
    """

    act: Callable[[], V]
    settle: Callable[[psycopg.Connection, V], Stage | None]
    resettle: Callable[[psycopg.Connection, V], Stage | None] | None = None
    """The settle to run instead, in a new transaction, when `settle` assumed the incident was still where
    the stage left it and its store.expect_status found it had moved on (a person closed it meanwhile)."""


Body = Callable[[psycopg.Connection, Runtime, Incident, str], "Stage | None | Outside[Any]"]
"""A stage's work on the locked incident: returns the next stage, None, or the work left to do Outside."""

R = TypeVar("R")


@dataclass(frozen=True)
class WithReads(Generic[R]):
    """A stage body whose reads are keyed by the incident's id, so drive_stage sends them right after the
    locked read of the incident, in its round trip, and hands their reader to the body."""

    send: Callable[[psycopg.Connection, Runtime, str], Callable[[], R]]
    """Sends the reads (the incident is not known yet, only its id); returns their reader."""
    body: Callable[[psycopg.Connection, Runtime, Incident, str, Callable[[], R]], "Stage | None | Outside[Any]"]

    def __call__(self, conn: psycopg.Connection, rt: Runtime, incident: Incident, worker: str
                 ) -> Stage | None | Outside[Any]:
        """The body with its reads sent now (one more round trip, for a caller outside drive_stage)."""
        return self.body(conn, rt, incident, worker, self.send(conn, rt, incident.id))


def check_incident_id(task: ErduTask, incident_id: object) -> str:
    """The incident id a stage message carries, or PermanentError (checked before the database sees it)."""
    if not isinstance(incident_id, str):
        raise PermanentError(f"{task.name} expects an incident id string, got {type(incident_id).__name__}")
    if not INCIDENT_ID.fullmatch(incident_id):
        # A 5 MB "id" is not a transient database error to retry.
        shown = incident_id[:40] + (f"… ({len(incident_id)} characters)" if len(incident_id) > 40 else "")
        raise PermanentError(f"{task.name} expects an incident id like INC-YYYYMMDDHHMMSS-xxxxxxxx, got {shown!r}")
    return incident_id


def park_poisoned(conn: psycopg.Connection, incident: Incident, stage: str, crashes: int, worker: str) -> None:
    """A stage that keeps killing its worker: escalate the locked incident (its run opens in the same commit)."""
    reason = f"stage {stage} lost its worker {crashes} times (poison protection); parked for a person"
    if escalate(conn, incident, reason=reason, stage=stage, actor="reconciler", worker=worker, what=reason):
        store.stage_finished(conn, incident.id, stage)
    log.error("incident parked", incident_id=incident.id, stage=stage, crashes=crashes)


def finish_quietly(rt: Runtime, incident_id: str, stage: Stage) -> None:
    """A handled failure is not a crash: count the finish if the database lets us."""
    try:
        with rt.db.transaction() as conn:
            store.stage_finished(conn, incident_id, stage)
    except Exception:
        pass


def run_stage(task: ErduTask, stage: Stage, incident_id: str, body: Body | WithReads[Any]) -> Stage | None:
    """Run a stage's body in this process's runtime (see drive_stage), hand on after commit."""
    return drive_stage(task, runtime(), Stage(stage), incident_id, body,
                       worker_name(task.request.hostname))


def drive_stage(task: ErduTask, rt: Runtime, stage: Stage, incident_id: str, body: Body | WithReads[Any],
                worker: str) -> Stage | None:
    """Count the start, load the incident locked, run the body if the incident is still owed this stage,
    hand on after commit.

    Round trips: the start is counted and committed in a transaction of its own (a worker lost half-way
    leaves it counted: poison protection), sent together with the work transaction's BEGIN and its locked
    read of the incident, so both cost one round trip; a body WithReads has its reads sent right after that
    read, in the same round trip. The work transaction is pipelined (Database.pipelined): writes wait for the
    next read or the commit. Its finish is counted in the transaction that stores its outcome (the settle's,
    for a body that returns Outside; an Outside whose settle finds the incident moved on settles again with
    its resettle).
    """
    check_incident_id(task, incident_id)
    counted: list[bool] = []   # the start is counted: a failure handled here is then a finish, not a crash

    def work() -> Stage | None | Outside[Any]:
        with rt.db.pipelined() as conn:
            crashes = store.stage_started_later(conn, incident_id, stage)
            conn.execute("COMMIT")   # the start stands even if this worker is lost during the work
            conn.execute("BEGIN")
            try:
                incident_later = store.get_incident_later(conn, incident_id, for_update=True)
                reads = body.send(conn, rt, incident_id) if isinstance(body, WithReads) else None
                incident = incident_later()
            except psycopg.Error:   # the start has an answer only if its commit ran
                try:
                    counted.append(crashes() >= 0)
                except psycopg.Error:
                    pass
                raise
            counted.append(True)
            if crashes() >= rt.settings.max_worker_crashes:
                if incident is not None:
                    park_poisoned(conn, incident, stage, crashes(), worker)
                return None
            if incident is None:
                raise PermanentError(f"no incident {incident_id}")
            if incident.status not in names.STAGE_FROM[stage]:
                log.info("stage already done", stage=stage.value, incident_id=incident_id,
                         status=incident.status.value)
                store.stage_finished(conn, incident_id, stage)
                return None
            result = (body.body(conn, rt, incident, worker, reads) if isinstance(body, WithReads) and reads is not None
                      else body(conn, rt, incident, worker))
            if not isinstance(result, Outside):
                store.stage_finished(conn, incident_id, stage)
            return result

    def settle(outside: Outside[Any], value: Any) -> Stage | None:
        try:
            with rt.db.pipelined() as conn:
                store.stage_finished(conn, incident_id, stage)   # the finish counts with the outcome, one commit
                return outside.settle(conn, value)
        except psycopg.Error as exc:
            if outside.resettle is None or not store.moved_on(exc):
                raise
        log.info("incident moved on while the stage acted", stage=stage.value, incident_id=incident_id)
        with rt.db.pipelined() as conn:
            store.stage_finished(conn, incident_id, stage)
            return outside.resettle(conn, value)

    try:
        result = task.with_retries(work)
        if isinstance(result, Outside):
            outside = result
            with kept(rt.db, incident_id):   # a live worker keeps its lease while it acts; a dead one's lapses
                value = task.with_retries(outside.act)
            result = task.with_retries(lambda: settle(outside, value))
    except BaseException:   # a failure handled here (or a retry) is not a lost worker
        if counted:
            finish_quietly(rt, incident_id, stage)
        raise
    if result:
        hand_on(result, incident_id)
    return result
