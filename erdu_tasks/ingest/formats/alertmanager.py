"""Prometheus Alertmanager webhook (version 4): the payload, and each alert as an ERDU event."""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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
