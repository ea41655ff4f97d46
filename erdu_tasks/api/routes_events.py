"""POST /v1/events: one event or a batch, stored before the answer (or queued with mode=queue)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from erdu_tasks.ingest.accept import accept
from erdu_tasks.errors import InvalidEvent
from erdu_tasks.ingest.formats.event import EventBatch, from_producer
from erdu_tasks.model import Event
from erdu_tasks.tasks.publish import hand_on_ingested
from erdu_tasks.api.auth import require_write
from erdu_tasks.api.context import ApiContext, context

router = APIRouter(tags=["events"])


class Mode(StrEnum):
    """How /v1/events takes events."""

    STORE = "store"
    QUEUE = "queue"


class IncidentOutcome(BaseModel):
    """Where a group of events landed."""

    id: str
    new: bool
    occurrences: int
    count: int


class EventsStored(BaseModel):
    """Answer of mode=store: the incidents, new or repeat."""

    incidents: list[IncidentOutcome]
    ignored: int
    handed_off: bool


class EventsQueued(BaseModel):
    """Answer of mode=queue: the ingest task that will store them."""

    queued: int
    task_id: str


ERRORS = {422: {"description": "The body does not match the contract; nothing was stored"}}


@router.post("/v1/events", response_model=EventsStored, dependencies=[Depends(require_write)],
             responses={**ERRORS, 202: {"model": EventsQueued, "description": "mode=queue: queued for ingest"}})
def post_events(
    body: Annotated[Event | EventBatch, Body(description="One event, or a list of 1 to 10,000 events")],
    ctx: Annotated[ApiContext, Depends(context)],
    mode: Annotated[Mode, Query(description="store: answer with incident ids; queue: hand to the ingest "
                                            "queue and answer 202 with the task id")] = Mode.STORE,
):
    """Take one event or a batch. Nothing is accepted while Redis or Postgres is down (503)."""
    try:
        events = from_producer(body if isinstance(body, list) else [body])
    except InvalidEvent as exc:
        raise HTTPException(422, str(exc)) from None
    if mode is Mode.QUEUE:
        payload = [e.model_dump(mode="json", exclude_defaults=True) for e in events]
        task_id = ctx.enqueue_ingest(payload if len(payload) > 1 else payload[0])
        return JSONResponse(EventsQueued(queued=len(payload), task_id=task_id).model_dump(), status_code=202)
    ctx.require_broker()
    result = accept(ctx.rt.db, events, ctx.rt)
    handed = hand_on_ingested(result.new_incidents, result.to_reassess, app=ctx.celery)
    return EventsStored(**result.as_dict(), handed_off=handed)
