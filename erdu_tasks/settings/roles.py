"""The `commander`, `learning` and `brain` settings sections: what the thinking roles are told.

The keys, as erdu.yaml writes them (every key optional)::

    commander:
      business_hours:                 # no calendar: hours are never a factor
        timezone: Europe/Berlin
        days: [mon, tue, wed, thu, fri]
        start: "08:00"
        end: "18:00"
        holidays: ["2025-12-25", "2026-01-01"]
      lower_outside_hours: [P3, P4]   # lowered one step outside hours unless users are hit
      blast_radius_services: 3        # this many affected services raise one step
      blast_radius_dependants: 2      # this many dependants (catalog) raise one step
      raise_user_facing: true         # a user-facing service hit (or depending on it) raises one step
      busy_open_incidents: 10         # this many other open incidents: maybe a wider outage
      flapping_recurrences: 3         # this many recurrences in the flap window raise one step
      storm_rate_per_min: 100         # occurrences per minute that raise one step
      escalate_uncovered: [P1]        # these go to people now when no runbook can help
      known_bad_rate: 0.2             # a runbook under this rate (over the sample minimum) is no help

    learning:
      auto_resolve_min_success: 0.9   # a runbook's success rate needed for auto-resolution
      auto_resolve_min_samples: 5     # ... over at least this many attempts (the minimum-sample rule)
      related_limit: 5                # related incidents the diagnostician lists
      related_min_score: 0.3          # trigram similarity (0..1) below which an incident is not related
      related_lookback_days: 90
      evidence:                       # log lines around the event (see roles/logwindow.py)
        log_roots: [/var/log/myapp]
        lines_before: 20
        lines_after: 10

    brain:
      base_url: https://api.openai.com/v1     # POST {base_url}/chat/completions
      model: gpt-4o-mini
      api_key: sk-...                         # or ERDU_BRAIN__API_KEY in the environment
      timeout: 10                             # seconds per request phase (connect, write, read)
      roles: [commander, diagnostician, resolver]
      temperature: 0
      max_tokens: 800
      json_mode: true                         # send response_format {"type": "json_object"}
      enabled: true                           # false keeps the section but uses the rules

The brain is off unless base_url and model are set; the role modules say how each key is used.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timezone
from typing import ClassVar, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, SecretStr, field_validator, model_validator

from erdu_tasks.model import Severity
from erdu_tasks.settings.common import Section, TimeOfDay, TimeZoneName

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BrainRole = Literal["commander", "diagnostician", "resolver"]


class BusinessHours(Section):
    """A weekly calendar in a time zone, minus holidays."""

    timezone: TimeZoneName = "UTC"
    days: list[Weekday] = Field(default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"], min_length=1)
    start: TimeOfDay = time(9, 0)
    end: TimeOfDay = time(17, 0)
    holidays: list[date] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ordered(self) -> "BusinessHours":
        if self.start >= self.end:
            raise ValueError("business hours must start before they end (within one day)")
        return self

    def contains(self, now: datetime) -> bool:
        """True when now (aware; naive means UTC) is inside business hours."""
        aware = now if now.tzinfo else now.replace(tzinfo=timezone.utc)
        local = aware.astimezone(ZoneInfo(self.timezone))
        if local.date() in self.holidays or WEEKDAYS[local.weekday()] not in self.days:
            return False
        return self.start <= local.time().replace(tzinfo=None) < self.end


class CommanderConfig(Section):
    """The validated `commander` settings section."""

    KEY: ClassVar[str] = "commander"

    business_hours: BusinessHours | None = None
    lower_outside_hours: list[Severity] = Field(default_factory=lambda: [Severity.P3, Severity.P4])
    blast_radius_services: int = Field(default=3, ge=2)
    blast_radius_dependants: int = Field(default=2, ge=1)
    raise_user_facing: bool = True
    busy_open_incidents: int = Field(default=10, ge=1)
    flapping_recurrences: int = Field(default=3, ge=1)
    storm_rate_per_min: float = Field(default=100.0, gt=0)
    escalate_uncovered: list[Severity] = Field(default_factory=lambda: [Severity.P1])
    known_bad_rate: float = Field(default=0.2, ge=0, le=1)


class EvidenceConfig(Section):
    """Where log evidence may be read from, and how much."""

    log_roots: list[str] = Field(default_factory=list)   # directories or globs (absolute)
    lines_before: int = Field(default=20, ge=0, le=1000)
    lines_after: int = Field(default=10, ge=0, le=1000)
    max_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_line_chars: int = Field(default=500, ge=40, le=10_000)
    window_seconds: float = Field(default=120.0, gt=0)   # how far from the first occurrence the event line may be
    seconds_before: float = Field(default=10.0, ge=0, le=3600)   # evidence: lines this long before the event ...
    seconds_after: float = Field(default=5.0, ge=0, le=3600)     # ... to this long after it (by their timestamps)


class LearningConfig(Section):
    """The validated `learning` settings section."""

    KEY: ClassVar[str] = "learning"

    auto_resolve_min_success: float = Field(default=0.9, gt=0, le=1)
    auto_resolve_min_samples: int = Field(default=5, ge=1)
    related_limit: int = Field(default=5, ge=1, le=50)
    related_min_score: float = Field(default=0.3, ge=0.05, le=1)
    related_lookback_days: float = Field(default=90, gt=0)
    # A new incident of the fingerprint this soon after a validated fix marks that fix failed after the
    # fact (a runbook's `recurrence_window` overrides it; 0 turns it off).
    recurrence_window_seconds: float = Field(default=300.0, ge=0, le=7 * 86400)
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    # Incidents of one service (a probe's and a log's) created this close together are one situation on
    # the report (0: off).
    situation_window_seconds: float = Field(default=120.0, ge=0, le=86400)


class BrainConfig(Section):
    """The validated `brain` settings section."""

    KEY: ClassVar[str] = "brain"

    enabled: bool | None = None
    base_url: str | None = None
    model: str | None = Field(default=None, min_length=1, max_length=200)
    api_key: SecretStr | None = None
    timeout: float = Field(default=10.0, gt=0, le=300)
    roles: list[BrainRole] = Field(default_factory=lambda: ["commander", "diagnostician", "resolver"])
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=800, ge=16, le=32_000)
    json_mode: bool = True
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("base_url must be an http(s) URL such as https://api.openai.com/v1")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _complete(self) -> "BrainConfig":
        if self.enabled and not (self.base_url and self.model):
            raise ValueError("an enabled LLM brain needs base_url and model")
        return self

    @property
    def active(self) -> bool:
        """True when the LLM brain should be used."""
        return self.enabled is not False and bool(self.base_url and self.model)
