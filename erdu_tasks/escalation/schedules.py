"""The on-call schedules of the `oncall` section, with their calendars read: who is on call now and next.

`Rota` is the one door every asker uses (the sweeper paging a level, `erdu oncall`, the API's
`/v1/oncall`): it reads each schedule's iCal file (again only when the file changed) and hands the
events to the pure answers of `escalation.oncall`.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from erdu_tasks.errors import ErduError
from erdu_tasks.escalation import oncall
from erdu_tasks.escalation.oncall import CalendarEvent, Handoff, OnCall, Shift
from erdu_tasks.settings.schedules import OncallConfig, ScheduleConfig

_BEFORE = timedelta(days=35)      # a calendar event that began this long before T may still cover T
_AHEAD = timedelta(days=120)      # how far ahead calendar events are read for "next handoff"
_MAX_CALENDAR_BYTES = 8 * 1024 * 1024
_SPAN = _BEFORE + _AHEAD + timedelta(days=30)   # what one expansion covers: asks a month apart reuse it


class UnknownSchedule(ErduError):
    """No schedule of that name; the message lists the defined ones."""


class CalendarUnreadable(ErduError):
    """A schedule's calendar file cannot be read or parsed; the message says which and why."""


@dataclass
class _Read:
    stamp: tuple[int, int]
    calendar: Any
    expanded: dict[str, tuple[datetime, datetime, list[CalendarEvent], list[str]]] = field(default_factory=dict)


class Rota:
    """Schedules by name, their calendars read on demand (cached per file until it changes)."""

    def __init__(self, config: OncallConfig, people: Mapping[str, Any]) -> None:
        self.config = config
        self.people = dict(people)
        self._cache: dict[Path, _Read] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        """Schedule names, sorted."""
        return sorted(self.config.schedules)

    def schedule(self, name: str) -> ScheduleConfig:
        """The schedule; UnknownSchedule (listing the defined ones) when there is none of that name."""
        try:
            return self.config.schedules[name]
        except KeyError:
            defined = ", ".join(self.names) or "none (add them under oncall.schedules)"
            raise UnknownSchedule(f"no schedule {name!r}; defined schedules: {defined}") from None

    def _calendar(self, path: Path) -> Any:
        try:
            info = path.stat()
        except OSError as exc:
            raise CalendarUnreadable(f"calendar {path}: {exc.strerror or exc}") from None
        stamp = (info.st_mtime_ns, info.st_size)
        with self._lock:
            cached = self._cache.get(path)
            if cached is not None and cached.stamp == stamp:
                return cached.calendar
        if not stat.S_ISREG(info.st_mode):
            raise CalendarUnreadable(f"calendar {path}: not a regular file")
        if info.st_size > _MAX_CALENDAR_BYTES:
            raise CalendarUnreadable(f"calendar {path}: larger than {_MAX_CALENDAR_BYTES // 1024 // 1024} MiB")
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as handle:
                data = handle.read(_MAX_CALENDAR_BYTES + 1)
        except OSError as exc:
            raise CalendarUnreadable(f"calendar {path}: {exc.strerror or exc}") from None
        try:
            calendar = oncall.parse_calendar(data)
        except ValueError as exc:
            raise CalendarUnreadable(f"calendar {path}: {exc}") from None
        with self._lock:
            self._cache[path] = _Read(stamp, calendar)
        return calendar

    def events(self, name: str, start: datetime, end: datetime) -> tuple[list[CalendarEvent], list[str]]:
        """A schedule's calendar events overlapping start..end, and the summaries that name nobody.

        Expanding recurrences is the slow part (seconds for thousands of occurrences), so each file's
        expansion covers a wider span than asked (up to _SPAN ahead) and is reused while it covers the ask."""
        schedule = self.schedule(name)
        if schedule.calendar is None:
            return [], []
        calendar = self._calendar(schedule.calendar)
        with self._lock:   # floating times depend on the zone: two schedules may read one file differently
            read = self._cache.get(schedule.calendar)
            done = read.expanded.get(schedule.time_zone) if read is not None and read.calendar is calendar else None
        if done is None or not (done[0] <= start and end <= done[1]):
            begin, finish = start, max(end, start + _SPAN)
            try:
                found, unmatched = oncall.calendar_events(calendar, begin, finish, schedule.zone, self.people)
            except ValueError as exc:
                raise CalendarUnreadable(f"calendar {schedule.calendar}: {exc}") from None
            done = (begin, finish, found, unmatched)
            with self._lock:
                read = self._cache.get(schedule.calendar)
                if read is not None and read.calendar is calendar:
                    read.expanded[schedule.time_zone] = done
        return [e for e in done[2] if e.end > start and e.start < end], done[3]

    def _window(self, name: str, at: datetime) -> list[CalendarEvent]:
        return self.events(name, at - _BEFORE, at + _AHEAD)[0]

    def now(self, name: str, at: datetime) -> OnCall:
        """Who is on call on the schedule at `at`."""
        return oncall.who_is_on_call(name, self.schedule(name), at, self._window(name, at))

    def next(self, name: str, at: datetime) -> Handoff | None:
        """The next handoff after `at` (calendar events are looked at 120 days ahead)."""
        return oncall.next_handoff(name, self.schedule(name), at, self._window(name, at))

    def shifts(self, name: str, at: datetime, count: int = 5) -> list[Shift]:
        """The shift in force at `at` and the next ones."""
        return oncall.upcoming(name, self.schedule(name), at, self._window(name, at), count=count)

    def summary(self, name: str, at: datetime) -> dict[str, Any]:
        """One schedule's person on call at `at`, what decides it, and the next handoff (JSON-ready)."""
        current, change = self.now(name, at), self.next(name, at)
        return {**current.as_dict(), "next": change.as_dict() if change else None, "error": None}

    def overview(self, at: datetime) -> list[dict[str, Any]]:
        """Every schedule's summary (what the console shows); a schedule whose calendar cannot be read
        has its `error` instead."""
        out = []
        for name in self.names:
            try:
                out.append(self.summary(name, at))
            except CalendarUnreadable as exc:
                out.append({"schedule": name, "at": at.isoformat(), "person": None, "source": None, "since": None,
                            "next": None, "error": str(exc)})
        return out

    def check(self) -> None:
        """Read every calendar once (start-up): CalendarUnreadable for the first that cannot be read."""
        for name, schedule in self.config.schedules.items():
            if schedule.calendar is not None:
                self._calendar(schedule.calendar)


__all__ = ["CalendarUnreadable", "Rota", "UnknownSchedule"]
