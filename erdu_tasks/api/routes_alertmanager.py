"""POST /v1/alertmanager: firing alerts open (or count on) incidents, resolved alerts resolve them."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import psycopg
from fastapi import APIRouter, Depends
from pydantic import BaseModel

from erdu_tasks.ingest.accept import dedup_fingerprint, fold, upsert_groups
from erdu_tasks.tasks.people import resolve
from erdu_tasks.ingest.formats import alertmanager as am
from erdu_tasks.api.auth import require_write
from erdu_tasks.api.context import ApiContext, context
from erdu_tasks.api.routes_events import ERRORS

router = APIRouter(tags=["alert sources"])


class AlertResult(BaseModel):
    """What happened to one alert."""

    fingerprint: str
    status: str
    outcome: am.Outcome
    incident_id: str | None = None


class NotificationResult(BaseModel):
    """What happened to each alert of the notification."""

    alerts: list[AlertResult]


def _claim_instance(conn: psycopg.Connection, key: str, starts_at: datetime) -> tuple[bool, str | None]:
    """Record a firing instance; (True, None) if it is new, (False, its incident) if delivered before."""
    row = conn.execute(
        "INSERT INTO alert_instances (source, alert_key, starts_at, state) VALUES (%s, %s, %s, 'firing')"
        " ON CONFLICT DO NOTHING RETURNING alert_key",
        (am.SOURCE, key, starts_at),
    ).fetchone()
    if row:
        return True, None
    old = conn.execute("SELECT incident_id FROM alert_instances WHERE source = %s AND alert_key = %s"
                       " AND starts_at = %s", (am.SOURCE, key, starts_at)).fetchone()
    return False, old["incident_id"] if old else None


def _fire(ctx: ApiContext, body: am.Notification, alerts: list[am.Alert]) -> list[AlertResult]:
    results: list[AlertResult] = []
    with ctx.rt.db.transaction() as conn:
        fresh = []
        for alert in sorted(alerts, key=lambda a: (am.alert_key(a), a.startsAt)):
            new, incident_id = _claim_instance(conn, am.alert_key(alert), alert.startsAt)
            if new:
                fresh.append((alert, am.alert_event(alert, body)))
            else:
                results.append(AlertResult(fingerprint=am.alert_key(alert), status="firing",
                                           outcome=am.Outcome.DUPLICATE, incident_id=incident_id))
        groups, _ = fold([event for _, event in fresh], ctx.rt.rules)
        outcomes = {o.fingerprint: o for o in upsert_groups(conn, groups, ctx.rt.catalog)}
        for alert, event in fresh:
            outcome = outcomes.get(dedup_fingerprint(event.dedup_key or ""))
            if outcome is None:
                results.append(AlertResult(fingerprint=am.alert_key(alert), status="firing",
                                           outcome=am.Outcome.IGNORED))
                continue
            conn.execute("UPDATE alert_instances SET incident_id = %s WHERE source = %s AND alert_key = %s"
                         " AND starts_at = %s", (outcome.incident_id, am.SOURCE, am.alert_key(alert), alert.startsAt))
            results.append(AlertResult(fingerprint=am.alert_key(alert), status="firing",
                                       outcome=am.Outcome.OPENED if outcome.created else am.Outcome.RECURRED,
                                       incident_id=outcome.incident_id))
    ctx.hand_off("assess", sorted({r.incident_id for r in results
                                  if r.outcome is am.Outcome.OPENED and r.incident_id}))
    return results


def _incident_of_instance(conn: psycopg.Connection, key: str, starts_at: datetime) -> str | None:
    """The open incident this alert instance belongs to, unless a later firing of the alert still holds it."""
    row = conn.execute(
        """
        SELECT a.incident_id FROM alert_instances a JOIN incidents i ON i.id = a.incident_id
        WHERE a.source = %(src)s AND a.alert_key = %(key)s AND a.starts_at = %(at)s
          AND i.status NOT IN ('resolved', 'closed')
          AND NOT EXISTS (SELECT 1 FROM alert_instances b WHERE b.source = a.source AND b.alert_key = a.alert_key
                          AND b.starts_at > a.starts_at AND b.state = 'firing' AND b.incident_id = a.incident_id)
        """,
        {"src": am.SOURCE, "key": key, "at": starts_at},
    ).fetchone()
    return row["incident_id"] if row else None


def _resolve(ctx: ApiContext, alert: am.Alert) -> AlertResult:
    key = am.alert_key(alert)
    with ctx.rt.db.transaction() as conn:
        incident_id = _incident_of_instance(conn, key, alert.startsAt)
    done = None
    if incident_id:
        ends = alert.endsAt.isoformat() if alert.endsAt else "now"
        done = ctx.try_action(resolve, incident_id, am.SOURCE, note=f"alert {key} resolved at {ends}", kind="source")
    # Recorded after the incident is resolved: a retry after a failure here finds it resolved already.
    with ctx.rt.db.transaction() as conn:
        conn.execute(
            "INSERT INTO alert_instances (source, alert_key, starts_at, state) VALUES (%s, %s, %s, 'resolved')"
            " ON CONFLICT (source, alert_key, starts_at) DO UPDATE SET state = 'resolved', updated_at = now()",
            (am.SOURCE, key, alert.startsAt),
        )
    return AlertResult(fingerprint=key, status="resolved",
                       outcome=am.Outcome.RESOLVED if done else am.Outcome.NOT_OPEN, incident_id=incident_id)


@router.post("/v1/alertmanager", response_model=NotificationResult, dependencies=[Depends(require_write)],
             responses=ERRORS)
def post_alertmanager(body: am.Notification, ctx: Annotated[ApiContext, Depends(context)]) -> NotificationResult:
    """Alertmanager webhook (version 4). Delivering the same notification again changes nothing."""
    ctx.require_broker()
    firing = [a for a in body.alerts if a.status == "firing"]
    results = _fire(ctx, body, firing) if firing else []
    results += [_resolve(ctx, a) for a in body.alerts if a.status == "resolved"]
    return NotificationResult(alerts=results)
