"""POST /v1/alertmanager: firing alerts open (or count on) incidents, resolved alerts resolve them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from erdu_tasks.ingest.formats import alertmanager as am
from erdu_tasks.tasks.people import resolve
from erdu_tasks.tasks.publish import hand_on_ingested
from erdu_tasks.api.auth import require_write
from erdu_tasks.api.context import ApiContext, context
from erdu_tasks.api.routes_events import ERRORS

router = APIRouter(tags=["alert sources"])


class NotificationResult(BaseModel):
    """What happened to each alert of the notification."""

    alerts: list[am.AlertResult]


def _resolve(ctx: ApiContext, alert: am.Alert) -> am.AlertResult:
    key = am.alert_key(alert)
    with ctx.rt.db.transaction() as conn:
        incident_id = am.incident_of_instance(conn, alert)
    done = None
    if incident_id:
        ends = alert.endsAt.isoformat() if alert.endsAt else "now"
        done = ctx.try_action(resolve, incident_id, am.SOURCE, note=f"alert {key} resolved at {ends}", kind="source")
    with ctx.rt.db.transaction() as conn:
        am.record_resolved(conn, alert)
    return am.AlertResult(fingerprint=key, status="resolved",
                          outcome=am.Outcome.RESOLVED if done else am.Outcome.NOT_OPEN, incident_id=incident_id)


@router.post("/v1/alertmanager", response_model=NotificationResult, dependencies=[Depends(require_write)],
             responses=ERRORS)
def post_alertmanager(body: am.Notification, ctx: Annotated[ApiContext, Depends(context)]) -> NotificationResult:
    """Alertmanager webhook (version 4). Delivering the same notification again changes nothing."""
    ctx.require_broker()
    results: list[am.AlertResult] = []
    firing = [a for a in body.alerts if a.status == "firing"]
    if firing:
        with ctx.rt.db.transaction() as conn:
            results = am.fire(conn, body, firing, ctx.rt)
        hand_on_ingested(am.opened(results), am.raised(results), app=ctx.celery)
    results += [_resolve(ctx, a) for a in body.alerts if a.status == "resolved"]
    return NotificationResult(alerts=results)
