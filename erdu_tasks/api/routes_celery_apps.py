"""The team's Celery apps over HTTP: their workers, task history search, safe retries and the audit.

What `erdu celery-apps` shows and does, for the console and any client. A retry re-publishes the task's
recorded message under a new id (tasks/celery_apps.py); a bulk retry runs here at its rate, bounded so
one request finishes within MAX_BULK_SECONDS.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from erdu_tasks.api.auth import require_read, require_write
from erdu_tasks.api.context import ApiContext, context
from erdu_tasks.errors import TransientError
from erdu_tasks.settings.celery_apps import CeleryAppsConfig
from erdu_tasks.store import celery_apps as history
from erdu_tasks.tasks import celery_apps

router = APIRouter(tags=["celery apps"])
Ctx = Annotated[ApiContext, Depends(context)]

MAX_BULK_SECONDS = 60.0
"""A bulk retry must fit in this long at its rate (limit / rate); larger ones are refused, to be split."""

_TEXT = Field(default=None, max_length=500)


def _config(ctx: ApiContext) -> CeleryAppsConfig:
    config = ctx.rt.monitors.celery_apps
    if config is None:
        raise HTTPException(404, "no monitors.celery_apps section in the settings")
    return config


class Worker(BaseModel):
    """A worker as the watcher last saw it."""

    app: str
    hostname: str
    state: str
    last_heartbeat: datetime | None
    offline_at: datetime | None
    active: int
    processed: int
    sw_ident: str | None
    sw_ver: str | None


class App(BaseModel):
    """A watched app and its workers."""

    name: str
    service: str
    queues: list[str]
    workers: list[Worker]


class AppList(BaseModel):
    """Every configured app."""

    apps: list[App]


class Task(BaseModel):
    """A task's history row: its recorded message (args/kwargs as reprs, never evaluated), state and times."""

    app: str
    task_id: str
    name: str | None
    state: str
    args: str | None
    kwargs: str | None
    worker: str | None
    exception: str | None
    error: str | None
    traceback: str | None
    queue: str | None
    routing_key: str | None
    root_id: str | None
    parent_id: str | None
    retries: int
    executions: int
    eta: datetime | None
    sent_at: datetime | None
    received_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    runtime: float | None
    retried_from: str | None
    retried_as: str | None
    retried_by: str | None
    retried_at: datetime | None
    updated_at: datetime
    values_from: str | None = Field(default=None, description="'result backend' when the exact args and kwargs "
                                    "were read from the app's result backend (a retry sends those)")


class TaskList(BaseModel):
    """Most recently changed first."""

    tasks: list[Task]


class RetryBody(BaseModel):
    """Who retries, and why (kept on the audit entry)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    by: str = Field(default="api", min_length=1, max_length=128)
    note: str | None = Field(default=None, max_length=2000)


class Retried(BaseModel):
    """A task sent again: its new id, where, and the values sent."""

    app: str
    task_id: str
    new_id: str
    name: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    values_from: str = Field(description="'result backend' (exact values) or 'event reprs' (plain literals)")


class BulkRetryBody(RetryBody):
    """Which failed tasks (not yet retried) to send again, and how fast."""

    app: str | None = Field(default=None, max_length=64)
    name: str | None = _TEXT
    worker: str | None = _TEXT
    exception: str | None = _TEXT
    text: str | None = _TEXT
    limit: int = Field(default=100, ge=1, le=1000)
    rate: float = Field(default=5.0, gt=0, le=100, description="Retries per second, at most")

    @model_validator(mode="after")
    def _bounded(self) -> "BulkRetryBody":
        if self.limit / self.rate > MAX_BULK_SECONDS:
            raise ValueError(f"limit / rate must be at most {MAX_BULK_SECONDS:g} s; split the retry or raise the rate")
        return self


class BulkOutcome(BaseModel):
    """One task of a bulk retry."""

    app: str
    task_id: str
    retried: bool
    new_id: str | None = None
    message: str


class BulkResult(BaseModel):
    """In the order tried."""

    results: list[BulkOutcome]


class Action(BaseModel):
    """An audit entry."""

    id: int
    at: datetime
    app: str
    action: str
    target: str | None
    by: str
    note: str | None
    ok: bool
    details: dict[str, Any]


class ActionList(BaseModel):
    """Newest first."""

    actions: list[Action]


@router.get("/v1/celery-apps", response_model=AppList, dependencies=[Depends(require_read)])
def list_apps(ctx: Ctx) -> AppList:
    """The watched apps and their workers as last seen (online, offline, lost)."""
    config = _config(ctx)
    with ctx.rt.db.transaction() as conn:
        workers = history.list_workers(conn)
    return AppList(apps=[App(name=a.name, service=a.service_name, queues=a.queues,
                             workers=[Worker(**w) for w in workers if w["app"] == a.name]) for a in config.apps])


@router.get("/v1/celery-apps/tasks", response_model=TaskList, dependencies=[Depends(require_read)])
def search_tasks(
    ctx: Ctx,
    app: Annotated[str | None, Query(max_length=64)] = None,
    task_id: Annotated[str | None, Query(max_length=255, description="A task id or the start of one")] = None,
    name: Annotated[str | None, Query(max_length=500, description="Exact, or with `*`")] = None,
    worker: Annotated[str | None, Query(max_length=255)] = None,
    exception: Annotated[str | None, Query(max_length=500, description="In the exception type or message")] = None,
    text: Annotated[str | None, Query(max_length=500, description="In the recorded args or kwargs")] = None,
    state: Annotated[str | None, Query(max_length=32)] = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> TaskList:
    """Search the task history by id, name, worker, exception and argument text."""
    _config(ctx)
    query = history.TaskQuery(app=app, task_id=task_id, name=name, worker=worker, exception=exception, text=text,
                              state=state, since=since, limit=limit)
    with ctx.rt.db.transaction() as conn:
        rows = history.search(conn, query)
    return TaskList(tasks=[Task(**r) for r in rows])


@router.get("/v1/celery-apps/{app}/tasks/{task_id}", response_model=Task, dependencies=[Depends(require_read)],
            responses={404: {"description": "No such task"}})
def get_task(ctx: Ctx, app: str, task_id: str) -> Task:
    """One task's history row."""
    _config(ctx)
    with ctx.rt.db.transaction() as conn:
        row = history.get_task(conn, app, task_id)
    if row is None:
        raise HTTPException(404, f"no task {task_id} of app {app} in the history")
    return Task(**row)


@router.post("/v1/celery-apps/{app}/tasks/{task_id}/retry", response_model=Retried,
             dependencies=[Depends(require_write)],
             responses={404: {"description": "No such app or task"}, 409: {"description": "Not retryable"},
                        503: {"description": "The app's broker refused the message"}})
def retry_task(ctx: Ctx, app: str, task_id: str, body: Annotated[RetryBody, Body()] = RetryBody()) -> Retried:
    """Send a failed (or lost) task's recorded message again under a new id (once; audited)."""
    config = _config(ctx)
    if config.app(app) is None:
        raise HTTPException(404, f"no celery app {app!r} in monitors.celery_apps")
    with ctx.rt.db.transaction() as conn:
        if history.get_task(conn, app, task_id) is None:
            raise HTTPException(404, f"no task {task_id} of app {app} in the history")
    try:
        done = celery_apps.retry(ctx.rt, config, app, task_id, by=body.by, note=body.note)
    except celery_apps.RetryRefused as exc:
        raise HTTPException(409, str(exc)) from None
    except TransientError as exc:
        raise HTTPException(503, str(exc)) from None
    return Retried(**done.as_dict())


@router.post("/v1/celery-apps/retry", response_model=BulkResult, dependencies=[Depends(require_write)])
def retry_many(ctx: Ctx, body: Annotated[BulkRetryBody, Body()]) -> BulkResult:
    """Send again every failed task not yet retried that the filters find, at most `rate` per second."""
    config = _config(ctx)
    if body.app and config.app(body.app) is None:
        raise HTTPException(404, f"no celery app {body.app!r} in monitors.celery_apps")
    query = history.TaskQuery(app=body.app, name=body.name, worker=body.worker, exception=body.exception,
                              text=body.text, retried=False, limit=body.limit)
    results = []
    for app, task_id, outcome in celery_apps.retry_many(ctx.rt, config, query, by=body.by, rate=body.rate,
                                                        note=body.note):
        if isinstance(outcome, str):
            results.append(BulkOutcome(app=app, task_id=task_id, retried=False, message=outcome))
        else:
            results.append(BulkOutcome(app=app, task_id=task_id, retried=True, new_id=outcome.new_id,
                                       message=f"retried as {outcome.new_id} on {outcome.queue}"))
    return BulkResult(results=results)


@router.get("/v1/celery-apps/actions", response_model=ActionList, dependencies=[Depends(require_read)])
def list_actions(ctx: Ctx, app: Annotated[str | None, Query(max_length=64)] = None,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> ActionList:
    """The audit of retries and remote commands, newest first."""
    with ctx.rt.db.transaction() as conn:
        rows = history.list_actions(conn, app, limit)
    return ActionList(actions=[Action(**r) for r in rows])
