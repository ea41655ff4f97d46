"""Heartbeats: POST /v1/heartbeats/NAME pings one (write token), GET /v1/heartbeats lists them (read token)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel

from erdu_tasks.api.auth import require_read, require_write
from erdu_tasks.api.context import ApiContext, context, log
from erdu_tasks.errors import TransientError
from erdu_tasks.monitors import heartbeats
from erdu_tasks.tasks.heartbeats import ping
from erdu_tasks.tasks.publish import hand_on

router = APIRouter(tags=["heartbeats"])
Ctx = Annotated[ApiContext, Depends(context)]
Name = Annotated[str, Path(pattern=heartbeats.HEARTBEAT_NAME.pattern, max_length=128,
                           description="Letters, digits, '_', '-' or '.'")]


class HeartbeatOut(BaseModel):
    """One heartbeat: new (never pinged), up, or late at the time of the answer."""

    name: str
    state: str
    last_seen: datetime | None
    due_at: datetime
    period_seconds: float
    grace_seconds: float
    declared: bool
    pings: int
    late_since: datetime | None
    incident_id: str | None
    last_source: str | None


class PingOut(HeartbeatOut):
    """A ping's answer: the heartbeat after it, whether the ping created it and the incident it resolved."""

    created: bool
    resolved: str | None


@router.post("/v1/heartbeats/{name}", response_model=PingOut, dependencies=[Depends(require_write)],
             responses={404: {"description": "Unknown heartbeat and heartbeats.create_on_ping is false"}})
def ping_heartbeat(name: Name, ctx: Ctx) -> PingOut:
    """Ping a heartbeat (created with the defaults on its first ping unless create_on_ping is off); a late
    heartbeat's incident is resolved by it."""
    now = datetime.now(timezone.utc)
    try:
        result = ping(ctx.rt, name, source="api", now=now)
    except heartbeats.UnknownHeartbeat as exc:
        raise HTTPException(404, str(exc)) from None
    except heartbeats.BadHeartbeatName as exc:
        raise HTTPException(422, str(exc)) from None
    return PingOut(**result.heartbeat.as_dict(now), created=result.created, resolved=result.resolved)


@router.get("/v1/heartbeats", response_model=list[HeartbeatOut], dependencies=[Depends(require_read)])
def list_heartbeats(ctx: Ctx) -> list[HeartbeatOut]:
    """Every heartbeat with its last ping and its state now (ERDU's own beat as `erdu:beat`)."""
    now = datetime.now(timezone.utc)
    with ctx.rt.db.transaction() as conn:
        found = heartbeats.list_heartbeats(conn)
    return [HeartbeatOut(**b.as_dict(now)) for b in found]


def watch_beat_once(ctx: ApiContext, now: datetime | None = None) -> str | None:
    """One look at beat's heartbeat; a new incident is handed to the commander. Returns the incident id."""
    return heartbeats.check_beat(ctx.rt.db, ctx.rt.settings.heartbeats, ctx.rt, now=now or datetime.now(timezone.utc),
                                 notify=lambda incident_id: hand_on("assess", incident_id, app=ctx.celery))


async def watch_beat(ctx: ApiContext) -> None:
    """The API's watch on beat, every heartbeats.beat.check_interval, until cancelled."""
    interval = ctx.rt.settings.heartbeats.beat.check_interval.total_seconds()
    while True:
        try:
            found = await asyncio.to_thread(watch_beat_once, ctx)
            if found:
                log.error("beat has stopped: incident raised", incident_id=found)
        except TransientError as exc:
            log.warning("beat watch skipped: outage", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - the watch must outlive one bad pass
            log.error("beat watch failed", error=f"{exc.__class__.__name__}: {exc}")
        await asyncio.sleep(interval)
