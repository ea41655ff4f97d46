"""The console's Celery apps pages: the watched apps and their workers, task history, one task, safe retry.

The same code as `erdu celery-apps` and `/v1/celery-apps`: the apps and workers are the API's listing
(routes_celery_apps.list_apps), the history is store/celery_apps.py's search, a retry is
tasks/celery_apps.py's (its `plan` is what the confirmation shows: the recorded values, never evaluated),
a bulk retry is the API's (its bounds and rate). Retries need the responder role and a CSRF token, and
each one leaves an audit entry with the person's key.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from erdu_tasks.api import routes_celery_apps as api
from erdu_tasks.errors import TransientError
from erdu_tasks.settings.celery_apps import CeleryApp, CeleryAppsConfig
from erdu_tasks.settings.people import PersonRole
from erdu_tasks.store import celery_apps as history
from erdu_tasks.tasks import celery_apps
from erdu_tasks.api.console.web import Refused, back, console_of, form, may, render, signed_in

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 200
SEARCH_FIELDS = ("task_id", "name", "worker", "exception", "text", "state")
FIELD_CHARS = 500
TASK_ID_CHARS = 255


def _config(request: Request) -> CeleryAppsConfig | None:
    return console_of(request).ctx.rt.monitors.celery_apps


def _app(request: Request, name: str) -> tuple[CeleryAppsConfig, CeleryApp]:
    config = _config(request)
    found = config.app(name) if config is not None else None
    if config is None or found is None:
        raise Refused(404, f"no celery app {name!r} in monitors.celery_apps")
    return config, found


def task_url(app: str, task_id: str) -> str:
    """The console's page of one task."""
    return f"/celery-apps/{quote(app, safe='')}/tasks/{quote(task_id, safe='')}"


def _task(request: Request, app: CeleryApp, task_id: str) -> dict[str, Any]:
    if not task_id or len(task_id) > TASK_ID_CHARS:
        raise Refused(404, "not a task id")
    with console_of(request).ctx.rt.db.transaction() as conn:
        row = history.get_task(conn, app.name, task_id)
    if row is None:
        raise Refused(404, f"no task {task_id} of app {app.name} in the history")
    return row


@router.get("/celery-apps", response_class=HTMLResponse)
def apps_page(request: Request) -> Response:
    """The watched apps, their queues and their workers as last seen; the latest retries and commands."""
    person = signed_in(request)
    ctx = console_of(request).ctx
    try:
        apps = api.list_apps(ctx).apps
    except HTTPException:   # no monitors.celery_apps section
        apps = None
    with ctx.rt.db.transaction() as conn:
        actions = history.list_actions(conn, limit=20) if apps is not None else []
    return render(request, "celery_apps.html.j2", person=person, apps=apps, actions=actions)


def _query(request: Request, app: str) -> tuple[dict[str, str], history.TaskQuery]:
    q = request.query_params
    fields = {k: (q.get(k) or "").strip() for k in SEARCH_FIELDS}
    for key, value in fields.items():
        if len(value) > FIELD_CHARS:
            raise Refused(400, f"{key} is longer than {FIELD_CHARS} characters")
    return fields, history.TaskQuery(app=app, limit=PAGE_SIZE, **{k: v or None for k, v in fields.items()})


@router.get("/celery-apps/{app}/tasks", response_class=HTMLResponse)
def tasks_page(request: Request, app: str) -> Response:
    """One app's task history, searchable by task id, name, worker, exception and argument text."""
    person = signed_in(request)
    _, found = _app(request, app)
    fields, query = _query(request, found.name)
    with console_of(request).ctx.rt.db.transaction() as conn:
        rows = history.search(conn, query)
    return render(request, "celery_tasks.html.j2", person=person, app=found, f=fields, rows=rows,
                  page_size=PAGE_SIZE, task_url=task_url, retryable=history.RETRYABLE_STATES)


@router.get("/celery-apps/{app}/tasks/{task_id}", response_class=HTMLResponse)
def task_page(request: Request, app: str, task_id: str) -> Response:
    """One task whole: its recorded args and kwargs, state, times, worker, exception, traceback, its retries."""
    person = signed_in(request)
    _, found = _app(request, app)
    row = _task(request, found, task_id)
    with console_of(request).ctx.rt.db.transaction() as conn:
        chain = history.retry_chain(conn, found.name, task_id)
    try:
        celery_apps.plan(found, row)
        why_not = None
    except celery_apps.RetryRefused as exc:
        why_not = str(exc)
    return render(request, "celery_task.html.j2", person=person, app=found, t=row, chain=chain, why_not=why_not,
                  task_url=task_url)


@router.get("/celery-apps/{app}/tasks/{task_id}/retry", response_class=HTMLResponse)
def confirm_retry(request: Request, app: str, task_id: str) -> Response:
    """The confirmation: exactly what the retry will publish, and where (responders)."""
    person = signed_in(request)
    may(person, PersonRole.responder, "to retry a task")
    _, found = _app(request, app)
    row = _task(request, found, task_id)
    try:
        sent = celery_apps.plan(found, row)
    except celery_apps.RetryRefused as exc:
        return back(task_url(found.name, task_id), error=str(exc))
    return render(request, "celery_retry.html.j2", person=person, app=found, t=row, plan=sent, task_url=task_url)


@router.post("/celery-apps/{app}/tasks/{task_id}/retry")
async def retry_task(request: Request, app: str, task_id: str) -> Response:
    """Publish the task's recorded message again under a new id (responders; once; audited)."""
    person = signed_in(request)
    may(person, PersonRole.responder, "to retry a task")
    fields = await form(request, person)
    config, found = _app(request, app)
    _task(request, found, task_id)
    note = (fields.get("note") or "").strip()[:2000] or None
    try:
        done = celery_apps.retry(console_of(request).ctx.rt, config, found.name, task_id, by=person.key, note=note)
    except (celery_apps.RetryRefused, TransientError) as exc:
        return back(task_url(found.name, task_id), error=str(exc))
    return back(task_url(found.name, done.new_id),
                message=f"{task_id} retried by {person.key} as {done.new_id} on queue {done.queue}")


def _bulk_fields(source: Any) -> dict[str, str]:
    return {k: (source.get(k) or "").strip()[:FIELD_CHARS] for k in ("name", "exception", "rate", "limit")}


def _bulk_body(person_key: str, app: str, f: dict[str, str], note: str | None = None) -> api.BulkRetryBody:
    if not f["name"] or not f["exception"]:
        raise Refused(400, "a bulk retry needs a task name and an exception (the failures of one kind)")
    try:
        return api.BulkRetryBody(by=person_key, app=app, name=f["name"], exception=f["exception"], note=note,
                                 rate=float(f["rate"] or 5), limit=int(f["limit"] or 100))
    except (ValidationError, ValueError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else [{"msg": str(exc)}]
        raise Refused(400, "bulk retry refused: " + "; ".join(str(e["msg"]) for e in errors)) from None


@router.get("/celery-apps/{app}/retry", response_class=HTMLResponse)
def confirm_bulk(request: Request, app: str) -> Response:
    """The confirmation of a bulk retry: the failed tasks of one name and exception it will send, and its rate."""
    person = signed_in(request)
    may(person, PersonRole.responder, "to retry tasks")
    _, found = _app(request, app)
    f = _bulk_fields(request.query_params)
    body = _bulk_body(person.key, found.name, f)
    query = history.TaskQuery(app=found.name, name=body.name, exception=body.exception, retried=False,
                              limit=body.limit)
    with console_of(request).ctx.rt.db.transaction() as conn:
        rows = [r for r in history.search(conn, query) if r["state"] in history.RETRYABLE_STATES]
    return render(request, "celery_bulk.html.j2", person=person, app=found, f=f, body=body, rows=rows,
                  task_url=task_url, seconds=max(0.0, (len(rows) - 1) / body.rate))


@router.post("/celery-apps/{app}/retry")
async def bulk_retry(request: Request, app: str) -> Response:
    """Retry the failures of one task name and exception at a rate (responders), through the API's bulk retry."""
    person = signed_in(request)
    may(person, PersonRole.responder, "to retry tasks")
    fields = await form(request, person)
    _, found = _app(request, app)
    f = _bulk_fields(fields)
    body = _bulk_body(person.key, found.name, f, (fields.get("note") or "").strip()[:2000] or None)
    result = api.retry_many(console_of(request).ctx, body).results
    sent = sum(1 for r in result if r.retried)
    refused = [r for r in result if not r.retried]
    target = f"/celery-apps/{quote(found.name, safe='')}/tasks?" + urlencode(
        {"name": body.name, "exception": body.exception})
    summary = f"{sent} of {len(result)} task(s) retried by {person.key}"
    if refused:
        return back(target, message=summary, error=f"{len(refused)} refused, e.g. {refused[0].task_id}: "
                                                  f"{refused[0].message}")
    return back(target, message=summary)
