"""Silences and maintenance windows: list, add, expire (what `erdu silence` does, over HTTP)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from erdu_tasks.escalation import silences
from erdu_tasks.escalation.policy import parse_duration
from erdu_tasks.api.auth import require_read, require_write
from erdu_tasks.api.context import ApiContext, context

router = APIRouter(tags=["silences"])
Ctx = Annotated[ApiContext, Depends(context)]
SilenceId = Annotated[str, Path(pattern=r"^SIL-[0-9a-f]{12}$", description="e.g. SIL-0123456789ab")]


class MatcherOut(BaseModel):
    """One matcher: name, operator (=, !=, =~, !~), value."""

    name: str
    op: str
    value: str


class SilenceOut(BaseModel):
    """A silence, its state now, and what it holds (silenced incidents are still counted)."""

    id: str
    state: silences.SilenceState
    matchers: list[MatcherOut]
    starts_at: datetime
    ends_at: datetime
    expired_at: datetime | None
    author: str
    comment: str
    active_during: list[str] = Field(default_factory=list, description="Recurring: only while these intervals match")
    held_incidents: int
    held_occurrences: int


class SilenceIn(BaseModel):
    """A new silence; a later starts_at makes it a maintenance window. Give ends_at or duration."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    matchers: list[str] = Field(min_length=1, max_length=silences.MAX_MATCHERS,
                                description="e.g. ['service=orders-db', 'label.env=prod', 'tag=~data.*']")
    comment: str = Field(min_length=1, max_length=2000)
    by: str = Field(default="api", min_length=1, max_length=200, description="The author")
    starts_at: datetime | None = Field(default=None, description="Default: now")
    ends_at: datetime | None = None
    duration: str | None = Field(default=None, description="e.g. 30m, 2h (when ends_at is not given)")
    active_during: list[str] = Field(default_factory=list, max_length=20,
                                     description="Names of escalation.time_intervals: a recurring silence")

    @model_validator(mode="after")
    def _one_end(self) -> SilenceIn:
        if (self.ends_at is None) == (self.duration is None):
            raise ValueError("give exactly one of ends_at and duration")
        for moment in (self.starts_at, self.ends_at):
            if moment is not None and moment.tzinfo is None:
                raise ValueError("times need a timezone, e.g. 2025-03-03T22:00:00Z")
        return self


def _out(s: silences.Silence, counts: dict[str, tuple[int, int]], now: datetime,
         intervals: Any = None) -> SilenceOut:
    held, occurrences = counts.get(s.id, (0, 0))
    return SilenceOut(id=s.id, state=s.state(now, intervals), active_during=list(s.active_during),
                      matchers=[MatcherOut(**m.to_dict()) for m in s.matchers],
                      starts_at=s.starts_at, ends_at=s.ends_at, expired_at=s.expired_at, author=s.author,
                      comment=s.comment, held_incidents=held, held_occurrences=occurrences)


@router.get("/v1/silences", response_model=list[SilenceOut], dependencies=[Depends(require_read)])
def list_silences(ctx: Ctx, include_expired: Annotated[bool, Query(alias="all")] = False) -> list[SilenceOut]:
    """Pending and active silences (and expired ones with all=true), latest end first."""
    now = datetime.now(timezone.utc)
    with ctx.rt.db.transaction() as conn:
        found = silences.list_silences(conn, now=now, include_expired=include_expired)
        counts = silences.held_counts(conn, [s.id for s in found])
    return [_out(s, counts, now, ctx.rt.settings.escalation.time_intervals) for s in found]


@router.post("/v1/silences", response_model=SilenceOut, status_code=201, dependencies=[Depends(require_write)],
             responses={400: {"description": "A matcher, time or duration is wrong; nothing was stored"}})
def add_silence(body: SilenceIn, ctx: Ctx) -> SilenceOut:
    """Add a silence or maintenance window: matching incidents are counted but notify nobody and run no fix."""
    now = datetime.now(timezone.utc)
    try:
        matchers = silences.parse_matchers(body.matchers)
        starts = body.starts_at or now
        try:
            ends = body.ends_at or starts + parse_duration(body.duration)
        except ValueError as exc:
            raise silences.SilenceError(f"duration: {exc}") from None
        config = ctx.rt.settings.escalation
        with ctx.rt.db.transaction() as conn:
            created = silences.add_silence(conn, matchers, starts_at=starts, ends_at=ends, author=body.by,
                                           comment=body.comment, now=now, active_during=body.active_during,
                                           intervals=config.time_intervals,
                                           max_duration=config.silences.max_duration)
    except silences.SilenceError as exc:
        raise HTTPException(400, str(exc)) from None
    return _out(created, {}, now, config.time_intervals)


@router.delete("/v1/silences/{silence_id}", response_model=SilenceOut, dependencies=[Depends(require_write)],
               responses={404: {"description": "No such silence"}, 409: {"description": "Already over"}})
def expire_silence(silence_id: SilenceId, ctx: Ctx,
                   by: Annotated[str, Query(min_length=1, max_length=200)] = "api") -> SilenceOut:
    """End a silence now (it stays listed with all=true); the incidents it held resume on the next sweep."""
    now = datetime.now(timezone.utc)
    with ctx.rt.db.transaction() as conn:
        if silences.get_silence(conn, silence_id) is None:
            raise HTTPException(404, f"no silence {silence_id}")
        try:
            expired = silences.expire_silence(conn, silence_id, who=by, now=now)
        except silences.SilenceError as exc:
            raise HTTPException(409, str(exc)) from None
        counts = silences.held_counts(conn, [silence_id])
    return _out(expired, counts, now)
