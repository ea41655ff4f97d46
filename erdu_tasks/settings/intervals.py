"""Named recurring time intervals, with Prometheus Alertmanager's `time_intervals` semantics.

    escalation:
      time_intervals:
        weekends:
          - weekdays: ["saturday", "sunday"]
            location: Europe/Berlin
        nights:                        # a window across midnight is split in two, as Alertmanager requires
          - times: [{start_time: "22:00", end_time: "24:00"}, {start_time: "00:00", end_time: "06:00"}]
            location: Europe/Berlin
        month-end-batch:
          - days_of_month: ["-3:-1"]   # the last three days of each month
            times: [{start_time: "01:00", end_time: "03:00"}]
        release-freeze:
          - months: ["december"]
            days_of_month: ["20:31"]
            years: ["2025:2026"]

An interval matches a moment when ANY of its entries matches; an entry matches when ALL the fields
it gives match (a field left out matches everything):

- `times`: ranges of the day `{start_time: "HH:MM", end_time: "HH:MM"}`, start included, end excluded,
  `00:00` to `24:00`; start must be before end (split a range across midnight into two);
- `weekdays`: `sunday` ... `saturday` (names only), or inclusive ranges `monday:friday`; as in
  Alertmanager the week starts on Sunday (`sunday:tuesday` is a range, `saturday:sunday` is refused:
  list the two days);
- `days_of_month`: `1` ... `31` or `-1` (the last day) ... `-31`, or inclusive ranges `1:5`, `-3:-1`,
  `1:-1`; a day past the end of a short month is clamped to its last day;
- `months`: `january` ... `december` or `1` ... `12`, or ranges (`june:august`, `3:5`);
- `years`: `2025` or ranges (`2025:2027`);
- `location`: the IANA time zone the other fields are read in (default UTC). Wall-clock times are
  compared, so `09:00` is 09:00 local before and after a DST change; a local time that does not exist
  that day (the hour skipped in spring) never matches, one that happens twice (autumn) matches twice.

Names are matched case-insensitively. Everything here is pure: the moment is passed in.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import PrivateAttr, field_validator, model_validator

from erdu_tasks.settings.common import Section, TimeZoneName, aware
from erdu_tasks.timecfg import quoted_time

# Alertmanager's order: a week starts on Sunday, so `sunday:tuesday` is a range and `saturday:sunday` is not.
WEEKDAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_HHMM = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


def _split(value: Any) -> tuple[str, str]:
    text = str(value).strip().lower()
    if ":" in text[1:]:
        index = text.index(":", 1)
        return text[:index].strip(), text[index + 1:].strip()
    return text, text


def _number(text: str, what: str, names: Sequence[str] = (), names_only: bool = False) -> int:
    if text in names:
        return names.index(text) + 1
    if names_only:
        raise ValueError(f"{text!r} is not a {what} (use a name: {', '.join(names)})")
    try:
        return int(text)
    except ValueError:
        hint = f" (or a name: {', '.join(names)})" if names else ""
        raise ValueError(f"{text!r} is not a {what}{hint}") from None


def _ranges(values: Any, what: str, low: int, high: int, names: Sequence[str] = (),
            negative: bool = False, names_only: bool = False) -> list[tuple[int, int]]:
    """Inclusive (begin, end) pairs from `a`, `a:b`, names or numbers; ValueError naming the bad one."""
    if isinstance(values, (str, int)) and not isinstance(values, bool):
        values = [values]
    out = []
    for value in values or []:
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a {what}")
        first, last = _split(value)
        begin, end = _number(first, what, names, names_only), _number(last, what, names, names_only)
        for n in (begin, end):
            ok = low <= n <= high or (negative and -high <= n <= -low)
            if not ok:
                span = f"{low}..{high}" + (f" or -{high}..-{low}" if negative else "")
                raise ValueError(f"{what} {n} in {value!r} is out of range ({span})")
        if (begin > 0) == (end > 0) and begin > end:
            raise ValueError(f"{what} range {value!r} ends before it starts")
        out.append((begin, end))
    return out


class TimeRange(Section):
    """A range of the day, start included, end excluded; minutes since midnight."""

    start_time: str
    end_time: str

    @field_validator("start_time", "end_time", mode="before")
    @classmethod
    def _hhmm(cls, value: Any) -> Any:
        value = quoted_time(value, "09:00")
        found = _HHMM.match(str(value).strip())
        if not found or (found.group(1) == "24" and found.group(2) != "00"):
            raise ValueError(f"{value!r} is not a time of day HH:MM between 00:00 and 24:00")
        return str(value).strip()

    @staticmethod
    def minutes(text: str) -> int:
        """HH:MM as minutes since midnight."""
        hours, minutes = text.split(":")
        return int(hours) * 60 + int(minutes)

    @model_validator(mode="after")
    def _ordered(self) -> TimeRange:
        if self.minutes(self.start_time) >= self.minutes(self.end_time):
            raise ValueError(f"start_time {self.start_time} is not before end_time {self.end_time}; a range across "
                             f"midnight must be split in two ({self.start_time}-24:00 and 00:00-{self.end_time})")
        return self

    def contains(self, minute: int) -> bool:
        """True when the minute of the day lies in the range."""
        return self.minutes(self.start_time) <= minute < self.minutes(self.end_time)


class TimeIntervalEntry(Section):
    """One entry of an interval: every field it gives must match."""

    times: list[TimeRange] | None = None
    weekdays: list[str] | None = None
    days_of_month: list[str | int] | None = None
    months: list[str | int] | None = None
    years: list[str | int] | None = None
    location: TimeZoneName = "UTC"
    _weekdays: list[tuple[int, int]] | None = PrivateAttr(default=None)
    _days: list[tuple[int, int]] | None = PrivateAttr(default=None)
    _months: list[tuple[int, int]] | None = PrivateAttr(default=None)
    _years: list[tuple[int, int]] | None = PrivateAttr(default=None)

    @field_validator("weekdays", "days_of_month", "months", "years", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _parse(self) -> TimeIntervalEntry:
        # Parsed once; a bad value fails here with the value at fault.
        if self.weekdays is not None:
            self._weekdays = _ranges(self.weekdays, "weekday", 1, 7, WEEKDAYS, names_only=True)
        if self.days_of_month is not None:
            self._days = _ranges(self.days_of_month, "day of month", 1, 31, negative=True)
        if self.months is not None:
            self._months = _ranges(self.months, "month", 1, 12, MONTHS)
        if self.years is not None:
            self._years = _ranges(self.years, "year", 1, 9999)
        return self

    def matches(self, moment: datetime) -> bool:
        """True when every given field matches the moment, read in `location`."""
        local = aware(moment).astimezone(ZoneInfo(self.location))
        if self.times is not None:
            minute = local.hour * 60 + local.minute
            if not any(r.contains(minute) for r in self.times):
                return False
        weekdays = self._weekdays
        day = (local.weekday() + 1) % 7 + 1   # Sunday 1 ... Saturday 7, as WEEKDAYS
        if weekdays is not None and not any(b <= day <= e for b, e in weekdays):
            return False
        days = self._days
        if days is not None:
            length = calendar.monthrange(local.year, local.month)[1]
            if not any(_day_in(local.day, b, e, length) for b, e in days):
                return False
        months = self._months
        if months is not None and not any(b <= local.month <= e for b, e in months):
            return False
        years = self._years
        if years is not None and not any(b <= local.year <= e for b, e in years):
            return False
        return True


def _day_in(day: int, begin: int, end: int, length: int) -> bool:
    """Whether a day of a month of `length` days lies in [begin, end] (negative: from the end; clamped)."""
    def absolute(n: int) -> int:
        return length + n + 1 if n < 0 else n
    first, last = max(absolute(begin), 1), min(absolute(end), length)
    return first <= day <= last


TimeIntervals = Mapping[str, Sequence[TimeIntervalEntry]]


def check_interval_names(value: Mapping[str, Any]) -> None:
    """Refuse interval names that are not letters, digits, '_', '-' or '.'."""
    for name in value:
        if not _NAME.fullmatch(str(name)):
            raise ValueError(f"time interval name {name!r} must be letters, digits, '_', '-' or '.'")


def interval_matches(entries: Iterable[TimeIntervalEntry], moment: datetime) -> bool:
    """True when any entry of one interval matches the moment."""
    return any(entry.matches(moment) for entry in entries)


def any_active(names: Iterable[str], intervals: TimeIntervals, moment: datetime) -> str | None:
    """The first named interval that matches the moment (unknown names never match), or None."""
    for name in names:
        entries = intervals.get(name)
        if entries is not None and interval_matches(entries, moment):
            return name
    return None


def unknown_names(names: Iterable[str], intervals: TimeIntervals) -> list[str]:
    """The names among `names` that no interval defines."""
    return [n for n in names if n not in intervals]

