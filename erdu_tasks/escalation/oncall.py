"""Who is on call: pure answers over a schedule, a moment and the calendar events read for it (no I/O).

Precedence at a moment T: an override covering T wins; then a calendar event covering T (the one that
began last); then the last layer that has begun and not ended. Rotation handoffs are local wall-clock
times in the layer's zone: a daily 09:00 handoff stays at 09:00 across DST changes, so the shift that
spans the change is an hour shorter (spring) or longer (autumn). A handoff at a local time the clocks
skip happens an hour later by the clock; one at a time that occurs twice happens at its first occurrence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from erdu_tasks.settings.schedules import Layer, Override, ScheduleConfig

if TYPE_CHECKING:   # icalendar and its recurrence expansion load with the first calendar, not with every worker
    import icalendar

UTC = timezone.utc
_MAX_STEPS = 2000
_TOKEN = re.compile(r"[a-z0-9][a-z0-9_.-]*")


@dataclass(frozen=True)
class CalendarEvent:
    """One (expanded) calendar occurrence naming a person."""

    start: datetime
    end: datetime
    person: str
    summary: str = ""


@dataclass(frozen=True)
class OnCall:
    """Who is on call at a moment, and which part of the schedule says so (None: nobody)."""

    schedule: str
    at: datetime
    person: str | None
    source: str | None = None          # "override", "calendar: <summary>", "layer <name>"
    since: datetime | None = None      # when that source's shift began

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"schedule": self.schedule, "at": self.at.isoformat(), "person": self.person, "source": self.source,
                "since": self.since.isoformat() if self.since else None}


@dataclass(frozen=True)
class Handoff:
    """The first change of who is on call after a moment."""

    schedule: str
    at: datetime
    from_person: str | None
    to_person: str | None
    source: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"schedule": self.schedule, "at": self.at.isoformat(), "from_person": self.from_person,
                "to_person": self.to_person, "source": self.source}


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: pass timezone-aware times")
    return moment.astimezone(UTC)


def local_instant(naive: datetime, zone: ZoneInfo) -> datetime:
    """A wall-clock time in a zone as a UTC instant (aware times are taken as they are).

    A skipped time (02:30 on the night clocks go forward) is read with the offset from before the change,
    so it falls an hour later by the clock (03:30); a repeated one (autumn) is its first occurrence."""
    if naive.tzinfo is not None:
        return naive.astimezone(UTC)
    return naive.replace(tzinfo=zone, fold=0).astimezone(UTC)

# --------------------------------------------------------------------------- layers


def _zone(layer: Layer, schedule: ScheduleConfig) -> ZoneInfo:
    return ZoneInfo(layer.time_zone or schedule.time_zone)


def layer_handoff(layer: Layer, zone: ZoneInfo, index: int) -> datetime:
    """The instant of the layer's handoff number `index` (0: its first participant begins)."""
    return local_instant(datetime.combine(layer.start, layer.handoff) + index * layer.rotation, zone)


def _layer_end(layer: Layer, zone: ZoneInfo) -> datetime | None:
    return local_instant(datetime.combine(layer.end, layer.handoff), zone) if layer.end else None


def _layer_index(layer: Layer, zone: ZoneInfo, at: datetime) -> int | None:
    """The number of the handoff in force at `at` (None before the layer starts or after it ends)."""
    if at < layer_handoff(layer, zone, 0):
        return None
    end = _layer_end(layer, zone)
    if end is not None and at >= end:
        return None
    local = at.astimezone(zone).replace(tzinfo=None)
    index = max(0, int((local - datetime.combine(layer.start, layer.handoff)) // layer.rotation))
    while layer_handoff(layer, zone, index + 1) <= at:
        index += 1
    while index > 0 and layer_handoff(layer, zone, index) > at:
        index -= 1
    return index


def _layer_name(layer: Layer, number: int) -> str:
    return f"layer {layer.name or number}"


# --------------------------------------------------------------------------- who, when


def _override_span(override: Override, zone: ZoneInfo) -> tuple[datetime, datetime]:
    return local_instant(override.start, zone), local_instant(override.end, zone)


def who_is_on_call(name: str, schedule: ScheduleConfig, at: datetime,
                   events: Sequence[CalendarEvent] = ()) -> OnCall:
    """The person on call at `at`: override, else calendar event, else the last layer in force."""
    at = _aware(at)
    zone = schedule.zone
    for override in reversed(schedule.overrides):
        start, end = _override_span(override, zone)
        if start <= at < end:
            return OnCall(name, at, override.person, "override", start)
    covering = [e for e in events if e.start <= at < e.end]
    if covering:
        event = max(enumerate(covering), key=lambda pair: (pair[1].start, pair[0]))[1]
        return OnCall(name, at, event.person, f"calendar: {event.summary}"[:120], event.start)
    for number in range(len(schedule.layers), 0, -1):
        layer = schedule.layers[number - 1]
        zone_l = _zone(layer, schedule)
        index = _layer_index(layer, zone_l, at)
        if index is not None:
            person = layer.participants[index % len(layer.participants)]
            return OnCall(name, at, person, _layer_name(layer, number), layer_handoff(layer, zone_l, index))
    return OnCall(name, at, None)


def _boundaries_after(schedule: ScheduleConfig, at: datetime, events: Sequence[CalendarEvent]) -> datetime | None:
    """The first moment after `at` at which some part of the schedule changes."""
    candidates: list[datetime] = []
    for layer in schedule.layers:
        zone = _zone(layer, schedule)
        index = _layer_index(layer, zone, at)
        first = layer_handoff(layer, zone, 0)
        if index is None:
            if at < first:
                candidates.append(first)
        else:
            candidates.append(layer_handoff(layer, zone, index + 1))
        end = _layer_end(layer, zone)
        if end is not None and end > at:
            candidates.append(end)
    for override in schedule.overrides:
        candidates += [t for t in _override_span(override, schedule.zone) if t > at]
    for event in events:
        candidates += [t for t in (event.start, event.end) if t > at]
    return min(candidates, default=None)


def next_handoff(name: str, schedule: ScheduleConfig, at: datetime, events: Sequence[CalendarEvent] = (),
                 *, horizon: timedelta = timedelta(days=400)) -> Handoff | None:
    """The first moment after `at` when someone else is on call (None: no change within the horizon)."""
    at = _aware(at)
    now = who_is_on_call(name, schedule, at, events)
    moment = at
    for _ in range(_MAX_STEPS):
        nxt = _boundaries_after(schedule, moment, events)
        if nxt is None or nxt > at + horizon:
            return None
        then = who_is_on_call(name, schedule, nxt, events)
        if then.person != now.person:
            return Handoff(name, nxt, now.person, then.person, then.source)
        moment = nxt
    return None


@dataclass(frozen=True)
class Shift:
    """A stretch of time with one person on call (start: when it begins from the asker's view)."""

    person: str | None
    source: str | None
    start: datetime
    end: datetime | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"person": self.person, "source": self.source, "start": self.start.isoformat(),
                "end": self.end.isoformat() if self.end else None}


def upcoming(name: str, schedule: ScheduleConfig, at: datetime, events: Sequence[CalendarEvent] = (),
             *, count: int = 5, horizon: timedelta = timedelta(days=400)) -> list[Shift]:
    """The shift in force at `at` and the ones after it, `count` at most."""
    shifts: list[Shift] = []
    begin = moment = _aware(at)
    for _ in range(count):
        current = who_is_on_call(name, schedule, moment, events)
        change = next_handoff(name, schedule, moment, events, horizon=horizon - (moment - begin))
        shifts.append(Shift(current.person, current.source, moment, change.at if change else None))
        if change is None:
            break
        moment = change.at
    return shifts


# --------------------------------------------------------------------------- calendars


def parse_calendar(data: bytes) -> icalendar.Calendar:
    """An iCal calendar from bytes; ValueError saying why it is not one."""
    import icalendar

    try:
        return icalendar.Calendar.from_ical(data)
    except Exception as exc:  # noqa: BLE001 - icalendar raises ValueError, KeyError, IndexError alike
        raise ValueError(f"not an iCalendar file: {type(exc).__name__}: {exc}") from None


def _instant(value: Any, zone: ZoneInfo) -> datetime:
    if isinstance(value, datetime):
        return local_instant(value, zone)
    if isinstance(value, date):
        return local_instant(datetime.combine(value, datetime.min.time()), zone)
    raise ValueError(f"not a date or time: {value!r}")


def _attendees(event: Any) -> list[Any]:
    found = event.get("ATTENDEE")
    if found is None:
        return []
    return list(found) if isinstance(found, list) else [found]


def person_of_event(event: Any, people: Mapping[str, Any]) -> str | None:
    """The person an event names: its SUMMARY is (or contains) a person key, or an ATTENDEE is one
    (by CN) or has their email address."""
    summary = str(event.get("SUMMARY") or "").strip().lower()
    if summary in people:
        return summary
    for token in _TOKEN.findall(summary):
        token = token.rstrip(".-")
        if token in people:
            return token
    emails = {}
    for key, person in people.items():
        email = getattr(getattr(person, "contacts", None), "email", None)
        if email:
            emails[email.lower()] = key
    for attendee in _attendees(event):
        cn = str(getattr(attendee, "params", {}).get("CN", "")).strip().lower()
        if cn in people:
            return cn
        address = str(attendee)
        address = address[7:] if address.lower().startswith("mailto:") else address
        if address.strip().lower() in emails:
            return emails[address.strip().lower()]
    return None


def calendar_events(calendar: icalendar.Calendar, start: datetime, end: datetime, zone: ZoneInfo,
                    people: Mapping[str, Any]) -> tuple[list[CalendarEvent], list[str]]:
    """The calendar's occurrences between start and end (recurrences expanded), and the summaries of
    those that name nobody in `people`."""
    import recurring_ical_events

    events: list[CalendarEvent] = []
    unmatched: list[str] = []
    try:
        found: Iterable[Any] = recurring_ical_events.of(calendar).between(_aware(start), _aware(end))
        found = list(found)
    except Exception as exc:  # noqa: BLE001 - a bad RRULE raises from deep inside the expansion
        raise ValueError(f"cannot expand the calendar's events: {type(exc).__name__}: {exc}") from None
    for event in found:
        raw_start = event.get("DTSTART")
        if raw_start is None:
            continue
        begin = _instant(raw_start.dt, zone)
        raw_end = event.get("DTEND")
        if raw_end is not None:
            finish = _instant(raw_end.dt, zone)
        elif event.get("DURATION") is not None:
            finish = begin + event.get("DURATION").dt
        elif not isinstance(raw_start.dt, datetime):
            finish = _instant(raw_start.dt + timedelta(days=1), zone)
        else:
            continue
        summary = str(event.get("SUMMARY") or "").strip()
        person = person_of_event(event, people)
        if person is None:
            unmatched.append(summary or "(no summary)")
            continue
        if finish > begin:
            events.append(CalendarEvent(begin, finish, person, summary))
    events.sort(key=lambda e: (e.start, e.end))
    return events, sorted(set(unmatched))


__all__ = ["CalendarEvent", "Handoff", "OnCall", "calendar_events", "layer_handoff", "local_instant",
           "next_handoff", "parse_calendar", "person_of_event", "Shift", "upcoming", "who_is_on_call"]
