"""The incident model: severities, statuses, the status machine and the Event contract."""

from __future__ import annotations

import re

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from erdu_tasks.errors import InvalidTransition


class Severity(StrEnum):
    """P1 is the worst: a service is down. P5 is informational."""

    P1 = "P1"
    P2 = "P2"
    P3 = "P3"
    P4 = "P4"
    P5 = "P5"

    @property
    def rank(self) -> int:
        """1 for P1 ... 5 for P5."""
        return int(self.value[1])

    def raised(self, steps: int = 1) -> "Severity":
        """A more urgent severity (towards P1)."""
        return Severity(f"P{max(1, self.rank - steps)}")

    def lowered(self, steps: int = 1) -> "Severity":
        """A less urgent severity (towards P5)."""
        return Severity(f"P{min(5, self.rank + steps)}")


class Status(StrEnum):
    """Where an incident is in its life."""

    DETECTED = "detected"
    ASSIGNED = "assigned"
    INVESTIGATING = "investigating"
    FIXING = "fixing"
    AWAITING_APPROVAL = "awaiting_approval"
    RESOLVED = "resolved"
    CLOSED = "closed"
    ESCALATED = "escalated"
    ACKNOWLEDGED = "acknowledged"


OPEN_STATUSES: frozenset[Status] = frozenset(
    {
        Status.DETECTED,
        Status.ASSIGNED,
        Status.INVESTIGATING,
        Status.FIXING,
        Status.AWAITING_APPROVAL,
        Status.ESCALATED,
        Status.ACKNOWLEDGED,
    }
)

_AUTOMATED = {
    Status.DETECTED: {Status.ASSIGNED},
    # assigned -> fixing is the auto-resolution shortcut that skips diagnosis.
    Status.ASSIGNED: {Status.INVESTIGATING, Status.FIXING},
    Status.INVESTIGATING: {Status.FIXING},
    Status.FIXING: {Status.RESOLVED, Status.AWAITING_APPROVAL},
    Status.AWAITING_APPROVAL: {Status.FIXING},
    Status.RESOLVED: {Status.CLOSED},
    # A person's retry re-enters the pipeline at the stage that failed.
    Status.ESCALATED: {Status.ACKNOWLEDGED, Status.DETECTED, Status.ASSIGNED, Status.INVESTIGATING},
    Status.ACKNOWLEDGED: {Status.ESCALATED, Status.DETECTED, Status.ASSIGNED, Status.INVESTIGATING},
    Status.CLOSED: set(),
}

# Any open incident may be escalated, and resolved by a person (or by its alert source saying so).
TRANSITIONS: dict[Status, frozenset[Status]] = {
    src: frozenset(dst | ({Status.ESCALATED, Status.RESOLVED} - {src} if src in OPEN_STATUSES else set()))
    for src, dst in _AUTOMATED.items()
}


def check_transition(src: Status, dst: Status) -> None:
    """Raise InvalidTransition unless the status machine allows src -> dst."""
    if dst not in TRANSITIONS[src]:
        raise InvalidTransition(f"transition {src.value} -> {dst.value} is not allowed")


INCIDENT_ID = re.compile(r"INC-\d{14}-[0-9a-f]{8}")
"""The shape of an incident id (fullmatch)."""


def new_incident_id(now: datetime | None = None) -> str:
    """INC-YYYYMMDDHHMMSS-xxxxxxxx, the id format of the seed."""
    now = now or datetime.now(timezone.utc)
    return f"INC-{now:%Y%m%d%H%M%S}-{secrets.token_hex(4)}"


MAX_MESSAGE_CHARS = 64_000
"""Longer messages are cut and marked; the fingerprint only needs the start."""


class Event(BaseModel):
    """What a producer sends. Anything that does not fit is refused as a whole."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    source: str = Field(default="api", min_length=1, max_length=64)
    message: str = Field(min_length=1)
    severity: Severity | None = None
    service: str | None = Field(default=None, max_length=128)
    host: str | None = Field(default=None, max_length=255)
    labels: dict[str, str] = Field(default_factory=dict)
    occurred_at: datetime | None = None
    count: int = Field(default=1, ge=1, le=10_000_000)
    dedup_key: str | None = Field(default=None, max_length=255)
    samples: list[str] = Field(default_factory=list, max_length=10)
    details: dict[str, Any] = Field(default_factory=dict)

    @field_validator("message")
    @classmethod
    def _cap_message(cls, value: str) -> str:
        if "\x00" in value:
            value = value.replace("\x00", "\\x00")
        if len(value) > MAX_MESSAGE_CHARS:
            value = value[:MAX_MESSAGE_CHARS] + f" …[truncated {len(value) - MAX_MESSAGE_CHARS} chars]"
        return value

    @field_validator("labels")
    @classmethod
    def _small_labels(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 64:
            raise ValueError("at most 64 labels")
        for k, v in value.items():
            if len(k) > 128 or len(v) > 1024:
                raise ValueError(f"label {k[:40]!r} is too long (key ≤ 128, value ≤ 1024 chars)")
        return value


@dataclass(frozen=True)
class TimelineEntry:
    """One line of an incident's history."""

    at: datetime
    actor: str
    worker: str | None
    from_status: str | None
    to_status: str | None
    what: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Incident:
    """An incident as loaded from Postgres; roles read it and return decisions."""

    id: str
    fingerprint: str
    title: str
    description: str
    severity: Severity
    status: Status
    source: str
    service: str | None = None
    host: str | None = None
    affected_services: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    error_details: dict[str, Any] = field(default_factory=dict)
    template: str = ""
    occurrences: int = 1
    created_at: datetime | None = None
    last_seen: datetime | None = None
    acknowledged_at: datetime | None = None
    resolved_at: datetime | None = None
    escalated_at: datetime | None = None
    closed_at: datetime | None = None
    assessment: dict[str, Any] = field(default_factory=dict)
    diagnosis: dict[str, Any] = field(default_factory=dict)
    fix: dict[str, Any] = field(default_factory=dict)
    root_cause: str | None = None
    resolution_actions: list[dict[str, Any]] = field(default_factory=list)
    lessons_learned: list[str] = field(default_factory=list)
    follow_ups: list[str] = field(default_factory=list)
    resolved_by: str | None = None
    auto_resolved: bool = False
    parent_id: str | None = None
    reopened_from: str | None = None
    report_path: str | None = None
    related: list[dict[str, Any]] | None = None   # related incidents as diagnosed (None: not searched yet)
    timeline: list[TimelineEntry] = field(default_factory=list)

    def first_occurrence(self, limit: int = 40) -> list[str]:
        """The first occurrence's concrete text (its message, then its traceback), [] if no more than the title."""
        text = (self.description or "").strip()
        if not text or text == self.title.strip():
            return []
        return text.splitlines()[:limit]

    @property
    def is_open(self) -> bool:
        """True while the incident still needs work or a person."""
        return self.status in OPEN_STATUSES
