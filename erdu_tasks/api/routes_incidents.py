"""Incidents: list, show with timeline, and what people do (ack, resolve, approve, retry)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from erdu_tasks.tasks import people
from erdu_tasks.store import incidents as store
from erdu_tasks.model import Incident, Severity, Status
from erdu_tasks.api.auth import require_read, require_write
from erdu_tasks.api.context import ApiContext, context

router = APIRouter(tags=["incidents"])

IncidentId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,100}$", description="e.g. INC-20240101120000-1a2b3c4d")]
Ctx = Annotated[ApiContext, Depends(context)]


class IncidentSummary(BaseModel):
    """One row of the incident list."""

    id: str
    title: str
    severity: Severity
    status: Status
    source: str
    service: str | None
    occurrences: int
    fingerprint: str
    created_at: datetime | None
    last_seen: datetime | None
    acknowledged_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None


class IncidentPage(BaseModel):
    """A page of incidents, newest first; next_cursor (and next_offset) are null on the last page.

    Pass next_cursor back as `cursor` for the next page: it reads on from the last row by index, so a deep
    page costs what the first does. `offset` paging still works (next_offset), but skips every row before.
    """

    incidents: list[IncidentSummary]
    limit: int
    offset: int
    next_offset: int | None
    next_cursor: str | None = None


class TimelineLine(BaseModel):
    """One transition or note."""

    at: datetime
    actor: str
    worker: str | None
    from_status: str | None
    to_status: str | None
    what: str
    details: dict[str, Any]


class IncidentDetail(IncidentSummary):
    """The whole incident with its timeline."""

    model_config = ConfigDict(extra="allow")

    description: str
    timeline: list[TimelineLine]


class ActionBody(BaseModel):
    """Who acts, and an optional note (on resolve, the cause if none is known; else a timeline note)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    by: str = Field(default="api", min_length=1, max_length=128, description="The person acting")
    note: str | None = Field(default=None, max_length=4000, description="what was done or why; kept on the timeline")


class ActionResult(BaseModel):
    """The action's outcome in one line."""

    incident_id: str
    message: str


def _summary(i: Incident) -> IncidentSummary:
    return IncidentSummary(id=i.id, title=i.title, severity=i.severity, status=i.status, source=i.source,
                           service=i.service, occurrences=i.occurrences, fingerprint=i.fingerprint,
                           created_at=i.created_at, last_seen=i.last_seen, acknowledged_at=i.acknowledged_at,
                           resolved_at=i.resolved_at, closed_at=i.closed_at)


@router.get("/v1/incidents", response_model=IncidentPage, dependencies=[Depends(require_read)])
def list_incidents(
    ctx: Ctx,
    status: Annotated[list[Status] | None, Query(description="Repeatable")] = None,
    severity: Annotated[list[Severity] | None, Query(description="Repeatable")] = None,
    service: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[datetime | None, Query(description="Created at or after (ISO 8601)")] = None,
    limit: Annotated[int | None, Query(ge=1, le=500)] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    cursor: Annotated[str | None, Query(max_length=400, description="next_cursor of the previous page")] = None,
) -> IncidentPage:
    """Incidents, newest first, filtered and paged (by cursor, or by offset)."""
    limit = limit or ctx.config.default_page_size
    if cursor is not None and offset:
        raise HTTPException(422, "page by cursor or by offset, not both")
    try:
        with ctx.rt.db.transaction() as conn:
            rows = store.list_incidents(conn, statuses=[s.value for s in status or []] or None,
                                        severities=[s.value for s in severity or []] or None,
                                        service=service, since=since, limit=limit + 1, offset=offset,
                                        after=cursor)
    except store.BadCursor as exc:
        raise HTTPException(422, f"cursor: {exc}") from None
    more = len(rows) > limit
    page = rows[:limit]
    return IncidentPage(incidents=[_summary(i) for i in page], limit=limit, offset=offset,
                        next_offset=offset + limit if more and cursor is None else None,
                        next_cursor=store.encode_cursor(page[-1]) if more else None)


@router.get("/v1/incidents/{incident_id}", response_model=IncidentDetail, dependencies=[Depends(require_read)],
            responses={404: {"description": "No such incident"}})
def get_incident(incident_id: IncidentId, ctx: Ctx) -> dict[str, Any]:
    """One incident with everything ERDU knows, and its timeline."""
    with ctx.rt.db.transaction() as conn:
        incident = store.get_incident(conn, incident_id, with_timeline=True)
    if incident is None:
        raise HTTPException(404, f"no incident {incident_id}")
    return asdict(incident)


class IncidentReport(BaseModel):
    """The incident's report: final once closed; before that, from its first escalation on, what is known so far."""

    incident_id: str
    final: bool
    markdown: str
    report: dict[str, Any]


@router.get("/v1/incidents/{incident_id}/report", response_model=IncidentReport,
            dependencies=[Depends(require_read)],
            responses={404: {"description": "No such incident, or no report yet (ERDU is still handling it)"}})
def get_report(incident_id: IncidentId, ctx: Ctx) -> IncidentReport:
    """The report as data and Markdown: interim ("what we know so far") from the first escalation, final at close."""
    from erdu_tasks.tasks.pipeline import current_report

    with ctx.rt.db.transaction() as conn:
        found = current_report(conn, ctx.rt, incident_id)
    if found is None:
        raise HTTPException(404, f"no report for {incident_id} (no such incident, or ERDU is still handling it)")
    data, markdown = found
    return IncidentReport(incident_id=incident_id, final=bool(data.get("final")), markdown=markdown, report=data)


_NEEDS_BROKER = {"resolve", "approve", "retry"}


def _act(ctx: ApiContext, name: str, incident_id: str, body: ActionBody | None) -> ActionResult:
    body = body or ActionBody()
    if name in _NEEDS_BROKER:
        ctx.require_broker()
    with ctx.rt.db.transaction() as conn:
        if store.get_incident(conn, incident_id) is None:
            raise HTTPException(404, f"no incident {incident_id}")
    try:
        done = people.act(ctx.rt, name, incident_id, body.by, body.note)
    except people.ActionRefused as exc:
        raise HTTPException(409, str(exc)) from None
    return ActionResult(incident_id=done.incident_id, message=done.message)


ACTION_RESPONSES = {404: {"description": "No such incident"},
                    409: {"description": "The incident's status does not allow this action"}}
OptionalBody = Annotated[ActionBody | None, Body()]


@router.post("/v1/incidents/{incident_id}/ack", response_model=ActionResult, dependencies=[Depends(require_write)],
             responses=ACTION_RESPONSES)
def ack(incident_id: IncidentId, ctx: Ctx, body: OptionalBody = None) -> ActionResult:
    """Acknowledge: stops an escalation; stamps acknowledged_at."""
    return _act(ctx, "ack", incident_id, body)


@router.post("/v1/incidents/{incident_id}/resolve", response_model=ActionResult,
             dependencies=[Depends(require_write)], responses=ACTION_RESPONSES)
def resolve(incident_id: IncidentId, ctx: Ctx, body: OptionalBody = None) -> ActionResult:
    """Resolve by hand; the resolver still writes the report and learns from it."""
    return _act(ctx, "resolve", incident_id, body)


@router.post("/v1/incidents/{incident_id}/approve", response_model=ActionResult,
             dependencies=[Depends(require_write)], responses=ACTION_RESPONSES)
def approve(incident_id: IncidentId, ctx: Ctx, body: OptionalBody = None) -> ActionResult:
    """Approve a fix waiting for a person's yes."""
    return _act(ctx, "approve", incident_id, body)


@router.post("/v1/incidents/{incident_id}/retry", response_model=ActionResult,
             dependencies=[Depends(require_write)], responses=ACTION_RESPONSES)
def retry(incident_id: IncidentId, ctx: Ctx, body: OptionalBody = None) -> ActionResult:
    """Re-drive an escalated incident from the stage that failed."""
    return _act(ctx, "retry", incident_id, body)
