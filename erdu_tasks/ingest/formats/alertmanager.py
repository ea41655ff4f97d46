"""Prometheus Alertmanager webhook (version 4): the payload, each alert as an ERDU event, and its delivery records.

Alertmanager delivers at least once. Each firing instance (an alert and its startsAt) is
recorded in `alert_instances` in the transaction that accepts it, so a notification delivered
again changes nothing; a resolved instance is recorded after its incident is resolved.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Literal

import psycopg
from pydantic import BaseModel, ConfigDict, Field

from erdu_tasks.ingest.accept import IngestRuntime, accept
from erdu_tasks.model import Event, Severity

SOURCE = "alertmanager"
MAX_LABELS = 64

# The `severity` label most Prometheus rule sets use, as an ERDU severity hint.
SEVERITY_LABELS: dict[str, Severity] = {
    "critical": Severity.P1, "page": Severity.P1, "high": Severity.P2, "error": Severity.P2,
    "major": Severity.P2, "warning": Severity.P3, "warn": Severity.P3, "minor": Severity.P4,
    "low": Severity.P4, "info": Severity.P5, "none": Severity.P5,
}


class Alert(BaseModel):
    """One alert of a notification."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(default_factory=dict, max_length=1000)
    annotations: dict[str, str] = Field(default_factory=dict, max_length=1000)
    startsAt: datetime
    endsAt: datetime | None = None
    generatorURL: str | None = Field(default=None, max_length=4096)
    fingerprint: str | None = Field(default=None, min_length=1, max_length=255)


class Notification(BaseModel):
    """The webhook body Alertmanager posts (fields ERDU does not use are ignored)."""

    model_config = ConfigDict(extra="ignore")

    version: Literal["4"] = "4"
    status: Literal["firing", "resolved"] = "firing"
    receiver: str = Field(default="", max_length=1024)
    groupKey: str = Field(default="", max_length=8192)
    truncatedAlerts: int = Field(default=0, ge=0)
    externalURL: str | None = Field(default=None, max_length=4096)
    alerts: list[Alert] = Field(max_length=10_000)


def alert_key(alert: Alert) -> str:
    """The alert's own fingerprint (not the group key), or a hash of its labels if it has none."""
    if alert.fingerprint:
        return alert.fingerprint
    text = "\x1f".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
    return "labels-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def dedup_key(alert: Alert) -> str:
    """The dedup key that keeps one open incident per alert."""
    return f"{SOURCE}:{alert_key(alert)}"


def alert_event(alert: Alert, notification: Notification) -> Event:
    """A firing alert as an ERDU event; every label and annotation is kept in the details."""
    labels, ann = alert.labels, alert.annotations
    name = labels.get("alertname", "").strip() or "alert"
    summary = (ann.get("summary") or ann.get("description") or ann.get("message") or "").strip()
    message = f"{name}: {summary}" if summary else name
    kept = {k[:128]: v[:1024] for k, v in list(labels.items())[:MAX_LABELS]}
    service = (labels.get("service") or labels.get("job") or labels.get("app") or "").strip()
    return Event(
        source=SOURCE,
        message=message,
        severity=SEVERITY_LABELS.get(labels.get("severity", "").lower()),
        service=service[:128] if service else None,
        host=(labels.get("instance") or "").strip()[:255] or None,
        labels=kept,
        occurred_at=alert.startsAt,
        count=1,
        dedup_key=dedup_key(alert)[:255],
        details={
            "alert_labels": labels, "annotations": ann, "starts_at": alert.startsAt.isoformat(),
            "generator_url": alert.generatorURL, "fingerprint": alert_key(alert),
            "receiver": notification.receiver, "external_url": notification.externalURL,
        },
    )


class Outcome(StrEnum):
    """What one alert of a notification did."""

    OPENED = "opened"            # a new incident
    RECURRED = "recurred"        # a new firing of the alert, counted on its open incident
    DUPLICATE = "duplicate"      # this alert instance was already delivered: nothing changed
    RESOLVED = "resolved"        # its incident is resolved now
    NOT_OPEN = "not_open"        # resolved alert whose incident was already resolved (or never seen)
    IGNORED = "ignored"          # dropped by an ignore rule


class AlertResult(BaseModel):
    """What happened to one alert."""

    fingerprint: str
    status: str
    outcome: Outcome
    incident_id: str | None = None
    reassess: bool = Field(default=False, exclude=True)   # its severity rose past the assessment


def _claim_instance(conn: psycopg.Connection, key: str, starts_at: datetime) -> tuple[bool, str | None]:
    """Record a firing instance; (True, None) if it is new, (False, its incident) if delivered before."""
    row = conn.execute(
        "INSERT INTO alert_instances (source, alert_key, starts_at, state) VALUES (%s, %s, %s, 'firing')"
        " ON CONFLICT DO NOTHING RETURNING alert_key",
        (SOURCE, key, starts_at),
    ).fetchone()
    if row:
        return True, None
    old = conn.execute("SELECT incident_id FROM alert_instances WHERE source = %s AND alert_key = %s"
                       " AND starts_at = %s", (SOURCE, key, starts_at)).fetchone()
    return False, old["incident_id"] if old else None


def fire(conn: psycopg.Connection, notification: Notification, alerts: Sequence[Alert],
         rt: IngestRuntime) -> list[AlertResult]:
    """Accept the firing alerts not delivered before, in conn's transaction; what each alert did."""
    results: list[AlertResult] = []
    fresh: list[tuple[Alert, Event]] = []
    for alert in sorted(alerts, key=lambda a: (alert_key(a), a.startsAt)):
        new, incident_id = _claim_instance(conn, alert_key(alert), alert.startsAt)
        if new:
            fresh.append((alert, alert_event(alert, notification)))
        else:
            results.append(AlertResult(fingerprint=alert_key(alert), status="firing", outcome=Outcome.DUPLICATE,
                                       incident_id=incident_id))
    accepted = accept(conn, [event for _, event in fresh], rt)
    for alert, event in fresh:
        outcome = accepted.for_dedup_key(event.dedup_key or "")
        if outcome is None:
            results.append(AlertResult(fingerprint=alert_key(alert), status="firing", outcome=Outcome.IGNORED))
            continue
        conn.execute("UPDATE alert_instances SET incident_id = %s WHERE source = %s AND alert_key = %s"
                     " AND starts_at = %s", (outcome.incident_id, SOURCE, alert_key(alert), alert.startsAt))
        results.append(AlertResult(fingerprint=alert_key(alert), status="firing",
                                   outcome=Outcome.OPENED if outcome.created else Outcome.RECURRED,
                                   incident_id=outcome.incident_id, reassess=outcome.reassess))
    return results


def opened(results: Sequence[AlertResult]) -> list[str]:
    """The incidents the alerts opened (each is handed on to assessment after the commit)."""
    return sorted({r.incident_id for r in results if r.outcome is Outcome.OPENED and r.incident_id})


def raised(results: Sequence[AlertResult]) -> list[str]:
    """The incidents past their assessment whose severity the alerts raised (each is re-assessed)."""
    return sorted({r.incident_id for r in results if r.reassess and r.incident_id})


def incident_of_instance(conn: psycopg.Connection, alert: Alert) -> str | None:
    """The open incident this alert instance belongs to, unless a later firing of the alert still holds it."""
    row = conn.execute(
        """
        SELECT a.incident_id FROM alert_instances a JOIN incidents i ON i.id = a.incident_id
        WHERE a.source = %(src)s AND a.alert_key = %(key)s AND a.starts_at = %(at)s
          AND i.status NOT IN ('resolved', 'closed')
          AND NOT EXISTS (SELECT 1 FROM alert_instances b WHERE b.source = a.source AND b.alert_key = a.alert_key
                          AND b.starts_at > a.starts_at AND b.state = 'firing' AND b.incident_id = a.incident_id)
        """,
        {"src": SOURCE, "key": alert_key(alert), "at": alert.startsAt},
    ).fetchone()
    return row["incident_id"] if row else None


def record_resolved(conn: psycopg.Connection, alert: Alert) -> None:
    """Mark the instance resolved (after its incident is, so a retry after a failure finds it resolved already)."""
    conn.execute(
        "INSERT INTO alert_instances (source, alert_key, starts_at, state) VALUES (%s, %s, %s, 'resolved')"
        " ON CONFLICT (source, alert_key, starts_at) DO UPDATE SET state = 'resolved', updated_at = now()",
        (SOURCE, alert_key(alert), alert.startsAt),
    )
