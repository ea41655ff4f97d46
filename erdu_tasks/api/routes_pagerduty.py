"""POST /v1/pagerduty: the Events API v2, answered the way PagerDuty answers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel

from erdu_tasks.ingest.accept import accept
from erdu_tasks.ingest.formats import pagerduty as pd
from erdu_tasks.tasks.people import acknowledge, resolve
from erdu_tasks.tasks.publish import hand_on_ingested
from erdu_tasks.api.auth import Access, access_for, bearer
from erdu_tasks.api.context import ApiContext, context

router = APIRouter(tags=["alert sources"])


class Accepted(BaseModel):
    """PagerDuty's 202 answer."""

    status: str = "success"
    message: str = "Event processed"
    dedup_key: str


class Invalid(BaseModel):
    """PagerDuty's 400 answer: the sender must not retry."""

    status: str = "invalid event"
    message: str = "Event object is invalid"
    errors: list[str]


def _authorize(request: Request, credentials: HTTPAuthorizationCredentials | None,
               event: pd.TriggerEvent | pd.FollowUpEvent) -> None:
    """The write token as a bearer token, or as the routing_key (PagerDuty senders cannot set headers)."""
    config = request.app.state.erdu.config
    presented = credentials.credentials if credentials else None
    if access_for(config, presented) is Access.WRITE or access_for(config, event.routing_key) is Access.WRITE:
        return
    if access_for(config, presented) is Access.READ:
        raise HTTPException(403, "the read-only token cannot change anything; use the write token")
    raise HTTPException(401, "a valid bearer token or routing_key is required", headers={"WWW-Authenticate": "Bearer"})


def _trigger(ctx: ApiContext, event: pd.TriggerEvent) -> str:
    key = event.dedup_key or pd.new_dedup_key()
    ctx.require_broker()
    result = accept(ctx.rt.db, [pd.trigger_event(event, key)], ctx.rt)
    hand_on_ingested(result.new_incidents, result.to_reassess, app=ctx.celery)
    return key


@router.post("/v1/pagerduty", status_code=202, response_model=Accepted,
             responses={400: {"model": Invalid, "description": "Invalid event: do not retry"},
                        401: {"description": "No or wrong token (bearer or routing_key)"}})
def post_pagerduty(event: Annotated[pd.PagerDutyEvent, Body()], request: Request,
                   ctx: Annotated[ApiContext, Depends(context)],
                   credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Accepted:
    """trigger opens (or counts on) the incident of its dedup_key; acknowledge and resolve act on it.

    A trigger after a resolve opens a new incident. An acknowledge or resolve for a key with no open
    incident is answered 202 and ignored, as PagerDuty does.
    """
    _authorize(request, credentials, event)
    if isinstance(event, pd.TriggerEvent):
        return Accepted(dedup_key=_trigger(ctx, event))
    key = event.dedup_key
    if event.event_action == pd.Action.RESOLVE:
        ctx.require_broker()
    with ctx.rt.db.transaction() as conn:
        incident_id = pd.open_incident(conn, key)
    if incident_id:
        action = acknowledge if event.event_action == pd.Action.ACKNOWLEDGE else resolve
        ctx.try_action(action, incident_id, pd.SOURCE, kind="source")
    return Accepted(dedup_key=key)
