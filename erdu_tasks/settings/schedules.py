"""The `oncall` section: on-call schedules (rotations in YAML, or an iCal calendar) and which channel carries
each kind of personal contact.

    oncall:
      schedules:
        primary:
          time_zone: Europe/Berlin        # the zone of handoff times and of naive override times
          layers:                         # later layers win where they have someone on call
            - name: weekly
              start: 2026-01-05           # the first participant's first handoff (a date, at `handoff`)
              rotation: 7d                # or daily / weekly / 12h; whole minutes
              handoff: "09:00"            # local wall-clock time: 09:00 in winter and in summer
              participants: [alice, bob, carol]   # in order; the rotation starts over after the last
            - name: weekend-cover
              start: 2026-03-07
              end: 2026-04-01             # optional: the layer stops then
              rotation: 7d
              participants: [dave]
          overrides:                      # swaps and holidays: they win over every layer
            - {start: "2026-03-30T09:00", end: "2026-04-02T09:00", person: bob}
        holidays:
          calendar: /etc/erdu/oncall.ics  # imported iCal: SUMMARY or ATTENDEE names the person
          time_zone: Europe/Berlin        # for floating (zone-less) event times
      contact_channels:                   # optional: which escalation channel carries each contact kind
        slack_user: oncall-slack          # default: the first channel of the matching type
        email: mail
        pagerduty: pd
        webhook: ops-hook                 # its secret and headers sign requests to the person's own URL

Every person a schedule names must be in the `people` section; escalation levels then name a schedule
(`schedule: primary`) or a person (`person: alice`) besides channels.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator, model_validator

from erdu_tasks.settings.common import Duration, Section, TimeOfDay, TimeZoneName

SCHEDULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""What a schedule's name may be: letters, digits, '_', '.', '-' (at most 64)."""

ContactKind = Literal["slack_user", "email", "pagerduty", "webhook"]
CONTACT_KINDS: tuple[str, ...] = ("slack_user", "email", "pagerduty", "webhook")
"""The kinds of personal contact, in the order a person is paged through them."""
CONTACT_CHANNEL_TYPE = {"slack_user": "slack", "email": "email", "pagerduty": "pagerduty", "webhook": "webhook"}
"""Contact kind -> the escalation channel type that carries it."""

_NAMED_ROTATIONS = {"daily": "1d", "weekly": "7d"}


class Layer(Section):
    """One rotation: participants take turns, each for `rotation`, handing off at a local time of day."""

    name: str | None = Field(default=None, max_length=64)
    start: date
    end: date | None = None
    rotation: Duration
    handoff: TimeOfDay = time(9, 0)
    participants: list[str] = Field(min_length=1, max_length=200)
    time_zone: TimeZoneName | None = None

    @field_validator("rotation", mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        return _NAMED_ROTATIONS.get(value, value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _sane(self) -> Layer:
        if self.rotation < timedelta(minutes=1) or self.rotation % timedelta(minutes=1):
            raise ValueError("rotation must be a whole number of minutes, at least 1m")
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end {self.end} is not after start {self.start}")
        return self


class Override(Section):
    """Someone else on call from start to end (a swap, a holiday cover); naive times are in the schedule's zone."""

    start: datetime
    end: datetime
    person: str

    @model_validator(mode="after")
    def _ordered(self) -> Override:
        if (self.start.tzinfo is None) != (self.end.tzinfo is None):
            raise ValueError("give both start and end with a UTC offset, or neither")
        if self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} is not after start {self.start.isoformat()}")
        return self


class ScheduleConfig(Section):
    """One schedule: rotation layers and/or an iCal calendar (above the layers), then overrides above all."""

    description: str | None = Field(default=None, max_length=200)
    time_zone: TimeZoneName = "UTC"
    layers: list[Layer] = Field(default_factory=list, max_length=20)
    calendar: Path | None = None
    overrides: list[Override] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _someone(self) -> ScheduleConfig:
        if not self.layers and self.calendar is None:
            raise ValueError("a schedule needs layers or a calendar")
        return self

    @property
    def zone(self) -> ZoneInfo:
        """The schedule's time zone."""
        return ZoneInfo(self.time_zone)

    def people(self) -> set[str]:
        """Every person the YAML names (a calendar's people are known only once it is read)."""
        return {p for layer in self.layers for p in layer.participants} | {o.person for o in self.overrides}


class OncallConfig(Section):
    """The `oncall` section: schedules by name, and the channel that carries each kind of contact."""

    KEY: ClassVar[str] = "oncall"

    schedules: dict[str, ScheduleConfig] = Field(default_factory=dict)
    contact_channels: dict[ContactKind, str] = Field(default_factory=dict)

    @field_validator("schedules")
    @classmethod
    def _names(cls, value: dict[str, ScheduleConfig]) -> dict[str, ScheduleConfig]:
        bad = sorted(n for n in value if not SCHEDULE_NAME.match(n))
        if bad:
            raise ValueError(f"invalid schedule name(s) {', '.join(map(repr, bad))}: use letters, digits, "
                             "'_', '.' or '-' (at most 64 characters)")
        return value

    def check_people(self, people: Mapping[str, Any]) -> None:
        """ValueError naming every schedule that names someone the `people` section does not have."""
        problems = []
        for name, schedule in self.schedules.items():
            unknown = sorted(schedule.people() - set(people))
            if unknown:
                problems.append(f"oncall.schedules.{name} names unknown people {unknown}")
        if problems:
            known = ", ".join(sorted(people)) or "none"
            raise ValueError("; ".join(problems) + f" (the people section defines: {known})")

    def check_contact_channels(self, channels: Mapping[str, Any]) -> None:
        """ValueError when a contact kind names a channel that is missing or of the wrong type."""
        for kind, channel in self.contact_channels.items():
            wanted = CONTACT_CHANNEL_TYPE[kind]
            settings = channels.get(channel)
            if settings is None:
                raise ValueError(f"oncall.contact_channels.{kind} names undefined channel {channel!r}; "
                                 f"defined channels: {sorted(channels)}")
            if settings.type != wanted:
                raise ValueError(f"oncall.contact_channels.{kind}: channel {channel!r} is a {settings.type} "
                                 f"channel; {kind} contacts need a {wanted} channel")

    def contact_channel(self, kind: str, channels: Mapping[str, Any]) -> str | None:
        """The channel that carries this kind of contact: the configured one, else the first of its type."""
        if kind in self.contact_channels:
            return self.contact_channels[kind]  # type: ignore[index]
        wanted = CONTACT_CHANNEL_TYPE[kind]
        return next((name for name, s in channels.items() if s.type == wanted), None)


__all__ = ["CONTACT_CHANNEL_TYPE", "CONTACT_KINDS", "ContactKind", "Layer", "OncallConfig", "Override",
           "SCHEDULE_NAME", "ScheduleConfig"]
