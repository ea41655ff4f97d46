"""The `heartbeats` section: dead-man switches that must ping within their period (plus a grace).

    heartbeats:
      defaults: {period: 5m, grace: 1m, severity: P2}   # for heartbeats created by their first ping
      create_on_ping: true          # a name pinged but not listed below is created with the defaults
      check_interval: 10s           # how often beat checks for late heartbeats
      checks:                       # declared heartbeats: known (and expected) before their first ping
        nightly-backup: {period: 24h, grace: 1h, service: backup, severity: P2}
        billing-export: {period: 15m, grace: 5m}
      beat:                         # ERDU's own: the API raises an incident when beat stops
        max_age: 60s                # the reconciler's last run older than this ("off" to disable)
        check_interval: 10s

A heartbeat is late once `period + grace` has passed since its last ping (or, before its first ping,
since it was declared). A late heartbeat becomes an incident (dedup key `heartbeat:NAME`); its next
ping resolves that incident.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field, field_validator, model_validator

from erdu_tasks.model import Severity
from erdu_tasks.settings.common import Duration, Section, parse_duration


def _grace(value: Any) -> timedelta:
    if value in (0, "0", "0s") or value == timedelta(0):
        return timedelta(0)
    return parse_duration(value)


Grace = Annotated[timedelta, BeforeValidator(_grace)]

HEARTBEAT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
"""What a heartbeat may be called (ERDU's own, `erdu:beat`, cannot be pinged from outside)."""


class HeartbeatSpec(Section):
    """One heartbeat: how often it must ping, how late it may be, what its incident says."""

    period: Duration = timedelta(minutes=5)
    grace: Grace = timedelta(minutes=1)
    severity: Severity = Severity.P2
    service: str | None = Field(default=None, max_length=128)


class BeatWatch(Section):
    """The API's watch on beat: the reconciler's last run may be at most max_age old."""

    max_age: Duration | None = timedelta(seconds=60)
    check_interval: Duration = timedelta(seconds=10)

    @model_validator(mode="before")
    @classmethod
    def _off(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("max_age") in (False, "off", "never"):
            data = {**data, "max_age": None}
        return data


class HeartbeatsConfig(Section):
    """The `heartbeats` section."""

    KEY: ClassVar[str] = "heartbeats"

    defaults: HeartbeatSpec = Field(default_factory=HeartbeatSpec)
    create_on_ping: bool = True
    check_interval: Duration = timedelta(seconds=10)
    checks: dict[str, HeartbeatSpec] = Field(default_factory=dict)
    beat: BeatWatch = Field(default_factory=BeatWatch)

    @field_validator("checks")
    @classmethod
    def _names(cls, value: dict[str, HeartbeatSpec]) -> dict[str, HeartbeatSpec]:
        for name in value:
            if not HEARTBEAT_NAME.fullmatch(name):
                raise ValueError(f"heartbeat name {name!r} must be letters, digits, '_', '-' or '.' (at most 128)")
        return value

    def spec_for(self, name: str) -> HeartbeatSpec | None:
        """The declared spec, the defaults for a name created by its ping, or None when unknown and not allowed."""
        if name in self.checks:
            return self.checks[name]
        return self.defaults if self.create_on_ping else None
