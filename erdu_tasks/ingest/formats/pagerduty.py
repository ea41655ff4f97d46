"""PagerDuty Events API v2: the request shape, its validation errors, and a trigger as an ERDU event."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import psycopg
from pydantic import BaseModel, ConfigDict, Field

from erdu_tasks.ingest.accept import dedup_fingerprint
from erdu_tasks.model import OPEN_STATUSES, Event, Severity

SOURCE = "pagerduty"

SEVERITIES: dict[str, Severity] = {
    "critical": Severity.P1, "error": Severity.P2, "warning": Severity.P3, "info": Severity.P5,
}


class Action(StrEnum):
    """event_action values."""

    TRIGGER = "trigger"
    ACKNOWLEDGE = "acknowledge"
    RESOLVE = "resolve"


class Payload(BaseModel):
    """payload of a trigger event."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_strip_whitespace=True)

    summary: str = Field(min_length=1, max_length=1024)
    source: str = Field(min_length=1, max_length=255)
    severity: Literal["critical", "error", "warning", "info"]
    timestamp: datetime | None = None
    component: str | None = Field(default=None, max_length=255)
    group: str | None = Field(default=None, max_length=255)
    class_: str | None = Field(default=None, alias="class", max_length=255)
    custom_details: dict[str, Any] | list[Any] | str | int | float | bool | None = None


class Link(BaseModel):
    """A link attached to the event."""

    model_config = ConfigDict(extra="allow")

    href: str = Field(max_length=4096)
    text: str | None = Field(default=None, max_length=1024)


class Image(BaseModel):
    """An image attached to the event."""

    model_config = ConfigDict(extra="allow")

    src: str = Field(max_length=4096)
    href: str | None = Field(default=None, max_length=4096)
    alt: str | None = Field(default=None, max_length=1024)


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    routing_key: str = Field(min_length=1, max_length=255)
    client: str | None = Field(default=None, max_length=1024)
    client_url: str | None = Field(default=None, max_length=4096)
    links: list[Link] = Field(default_factory=list, max_length=50)
    images: list[Image] = Field(default_factory=list, max_length=50)


class TriggerEvent(_Common):
    """A trigger: opens an incident for its dedup_key, or counts on the open one."""

    event_action: Literal["trigger"]
    dedup_key: str | None = Field(default=None, min_length=1, max_length=255)
    payload: Payload


class FollowUpEvent(_Common):
    """An acknowledge or resolve for the incident of a dedup_key."""

    event_action: Literal["acknowledge", "resolve"]
    dedup_key: str = Field(min_length=1, max_length=255)
    payload: dict[str, Any] | None = Field(default=None, description="Ignored for acknowledge and resolve")


PagerDutyEvent = Annotated[TriggerEvent | FollowUpEvent, Field(discriminator="event_action")]


def new_dedup_key() -> str:
    """A dedup key for a trigger that came without one (PagerDuty makes one up too)."""
    return uuid.uuid4().hex


def namespaced(dedup_key: str) -> str:
    """The sender's dedup_key in PagerDuty's namespace, apart from every other producer's keys."""
    return f"{SOURCE}:{dedup_key}"


def trigger_event(event: TriggerEvent, dedup_key: str) -> Event:
    """A trigger as an ERDU event keyed by its dedup_key (in the PagerDuty namespace)."""
    payload = event.payload
    labels = {k: v for k, v in (("component", payload.component), ("group", payload.group),
                                ("class", payload.class_)) if v}
    details: dict[str, Any] = {"source": payload.source, "severity": payload.severity}
    if payload.custom_details is not None:
        details["custom_details"] = payload.custom_details
    if event.links:
        details["links"] = [link.model_dump(exclude_none=True) for link in event.links]
    if event.images:
        details["images"] = [image.model_dump(exclude_none=True) for image in event.images]
    if event.client:
        details["client"] = event.client
    if event.client_url:
        details["client_url"] = event.client_url
    return Event(
        source=SOURCE, message=payload.summary, severity=SEVERITIES[payload.severity],
        service=(payload.component or payload.group or "")[:128] or None, host=payload.source, labels=labels,
        occurred_at=payload.timestamp, count=1, dedup_key=namespaced(dedup_key), details=details,
    )


def open_incident(conn: psycopg.Connection, dedup_key: str) -> str | None:
    """The open incident of a dedup_key (what an acknowledge or resolve acts on), if there is one."""
    row = conn.execute("SELECT id FROM incidents WHERE fingerprint = %s AND status = ANY(%s)",
                       (dedup_fingerprint(namespaced(dedup_key)), [s.value for s in OPEN_STATUSES])).fetchone()
    return row["id"] if row else None


_TAGS = {"body", *(a.value for a in Action)}


def error_messages(errors: list[dict[str, Any]]) -> list[str]:
    """Pydantic errors as PagerDuty-style lines ('payload.summary: Field required')."""
    lines = []
    for e in errors[:20]:
        if e.get("type") in ("union_tag_not_found", "union_tag_invalid"):
            lines.append("event_action: must be one of " + ", ".join(a.value for a in Action))
            continue
        # The location starts with "body" and the event_action tag; neither helps the sender.
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in _TAGS)
        lines.append(f"{where}: {e.get('msg', 'invalid')}" if where else str(e.get("msg", "invalid")))
    return lines
