"""On call: GET /v1/oncall (every schedule: who now, the next handoff) and GET /v1/oncall/{schedule}
(who now, the coming shifts); both with `?at=` for another moment. Read token."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel

from erdu_tasks.api.auth import require_read
from erdu_tasks.api.context import ApiContext, context
from erdu_tasks.escalation.schedules import CalendarUnreadable, UnknownSchedule
from erdu_tasks.settings.schedules import SCHEDULE_NAME

router = APIRouter(tags=["oncall"])
Ctx = Annotated[ApiContext, Depends(context)]
At = Annotated[datetime | None, Query(description="Ask about this moment (ISO 8601 with a UTC offset); default now")]


class HandoffOut(BaseModel):
    """The next change of who is on call."""

    schedule: str
    at: datetime
    from_person: str | None
    to_person: str | None
    source: str | None


class OnCallOut(BaseModel):
    """Who is on call on one schedule (person null: nobody), what decides it, and the next handoff."""

    schedule: str
    at: datetime
    person: str | None
    source: str | None
    since: datetime | None
    next: HandoffOut | None
    error: str | None = None


class ShiftOut(BaseModel):
    """A stretch of time with one person on call."""

    person: str | None
    source: str | None
    start: datetime
    end: datetime | None


class ScheduleOut(OnCallOut):
    """One schedule: who now, the next handoff, and the coming shifts."""

    time_zone: str
    shifts: list[ShiftOut]


def _moment(at: datetime | None) -> datetime:
    if at is None:
        return datetime.now(timezone.utc)
    if at.tzinfo is None:
        raise HTTPException(422, "at needs a UTC offset, e.g. 2026-03-29T07:30:00Z")
    return at


@router.get("/v1/oncall", response_model=list[OnCallOut], dependencies=[Depends(require_read)])
def oncall_now(ctx: Ctx, at: At = None) -> list[OnCallOut]:
    """Every schedule: who is on call now (or `at`) and the next handoff; a calendar that cannot be read
    gives that schedule an `error` instead."""
    return [OnCallOut(**row) for row in ctx.rt.rota.overview(_moment(at))]


@router.get("/v1/oncall/{schedule}", response_model=ScheduleOut, dependencies=[Depends(require_read)],
            responses={404: {"description": "No such schedule"}, 503: {"description": "Its calendar cannot be read"}})
def oncall_schedule(schedule: Annotated[str, Path(pattern=SCHEDULE_NAME.pattern, max_length=64)], ctx: Ctx,
                    at: At = None, count: Annotated[int, Query(ge=1, le=100)] = 8) -> ScheduleOut:
    """One schedule: who is on call now (or `at`), the next handoff and the coming `count` shifts."""
    moment = _moment(at)
    try:
        one = ctx.rt.rota.summary(schedule, moment)
        shifts = ctx.rt.rota.shifts(schedule, moment, count)
    except UnknownSchedule as exc:
        raise HTTPException(404, str(exc)) from None
    except CalendarUnreadable as exc:
        raise HTTPException(503, str(exc)) from None
    return ScheduleOut(**one, time_zone=ctx.rt.rota.schedule(schedule).time_zone,
                       shifts=[ShiftOut(**s.__dict__) for s in shifts])
