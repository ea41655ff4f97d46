"""Silences and maintenance windows: matchers over incidents, kept in Postgres.

A silenced incident is still recorded and counted, but it notifies nobody and runs no fix.
A maintenance window is a silence whose start lies in the future.

Matchers follow Alertmanager's form `name=value`, `name!=value`, `name=~regex`,
`name!~regex`; every matcher of a silence must hold. Names:

- `service`: the incident's service or any of its affected services
- `fingerprint`, `severity`
- `tag`: any of the incident's tags
- `label.KEY` (or `labels.KEY`): the incident's label KEY (missing means "")

Regexes are RE2 (linear time) and must match the whole value.

A recurring silence names time intervals of the settings (`active_during`, see
erdu_tasks/settings/intervals.py): inside its window it silences only while one of them matches,
so "every night 22:00-06:00 for the next month" is one silence. An interval name the settings no
longer define never matches (the incident is not silenced: a P1 still pages).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from erdu_tasks.settings.common import compile_pattern   # RE2, case-sensitive
from erdu_tasks.store.db import later
from erdu_tasks.settings.intervals import TimeIntervals, any_active
from erdu_tasks.errors import ErduError
from erdu_tasks.model import Incident, Severity, Status

_NAME = re.compile(r"(service|fingerprint|severity|tag|labels?\.[A-Za-z0-9_.:/-]{1,128})")
_MATCHER = re.compile(r"^\s*([A-Za-z0-9_.:/-]+)\s*(=~|!~|!=|=)\s*(.*?)\s*$", re.DOTALL)
MAX_VALUE_CHARS = 1024
MAX_MATCHERS = 20
MAX_DURATION = timedelta(days=366)   # the default of escalation.silences.max_duration


@lru_cache(maxsize=512)
def _compiled(pattern: str) -> Any:
    return compile_pattern(pattern)


class SilenceError(ErduError):
    """A silence that cannot be added or changed; the message says why."""


class MatchOp(StrEnum):
    """How a matcher compares."""

    EQUAL = "="
    NOT_EQUAL = "!="
    REGEX = "=~"
    NOT_REGEX = "!~"


@dataclass(frozen=True)
class Matcher:
    """One condition on an incident field."""

    name: str
    op: MatchOp
    value: str

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """A matcher from `name=value`, `name!=value`, `name=~re` or `name!~re`."""
        found = _MATCHER.match(text or "")
        if not found:
            raise SilenceError(f"matcher {text!r} is not name=value, name!=value, name=~regex or name!~regex")
        name, op, value = found.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        return cls.build(name, op, value)

    @classmethod
    def build(cls, name: str, op: str, value: str) -> Matcher:
        """A validated matcher."""
        name = name.strip()
        if not _NAME.fullmatch(name):
            raise SilenceError(f"unknown matcher name {name!r}: use service, fingerprint, severity, tag "
                               "or label.KEY")
        if name.startswith("labels."):
            name = "label." + name.removeprefix("labels.")
        try:
            mop = MatchOp(op)
        except ValueError:
            raise SilenceError(f"unknown operator {op!r}: use =, !=, =~ or !~") from None
        if len(value) > MAX_VALUE_CHARS:
            raise SilenceError(f"matcher value for {name} is longer than {MAX_VALUE_CHARS} characters")
        if mop in (MatchOp.REGEX, MatchOp.NOT_REGEX):
            try:
                _compiled(value)
            except ValueError as exc:
                raise SilenceError(f"bad regex for {name}: {value!r}: {exc}") from None
        elif mop is MatchOp.EQUAL and value == "" and not name.startswith("label."):
            raise SilenceError(f"matcher {name}= needs a value")
        return cls(name, mop, value)

    def values_of(self, incident: Incident) -> list[str]:
        """The incident values this matcher looks at."""
        if self.name == "service":
            return [v for v in dict.fromkeys([incident.service or "", *incident.affected_services]) if v]
        if self.name == "fingerprint":
            return [incident.fingerprint]
        if self.name == "severity":
            return [str(incident.severity)]
        if self.name == "tag":
            return list(incident.tags)
        return [str((incident.labels or {}).get(self.name.removeprefix("label."), ""))]

    def matches(self, incident: Incident) -> bool:
        """True when the incident satisfies this matcher."""
        values = self.values_of(incident)
        if self.op is MatchOp.EQUAL:
            return self.value in values
        if self.op is MatchOp.NOT_EQUAL:
            return self.value not in values
        pattern = _compiled(self.value)
        hit = any(pattern.fullmatch(v) for v in values)
        return hit if self.op is MatchOp.REGEX else not hit

    def to_dict(self) -> dict[str, str]:
        """JSON form, as stored."""
        return {"name": self.name, "op": self.op.value, "value": self.value}

    def __str__(self) -> str:
        return f"{self.name}{self.op.value}{self.value}"


class SilenceState(StrEnum):
    """Where a silence is in its life at a given moment."""

    PENDING = "pending"
    ACTIVE = "active"
    EXPIRED = "expired"


@dataclass(frozen=True)
class Silence:
    """A set of matchers that keeps matching incidents quiet between starts_at and ends_at."""

    id: str
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    author: str
    comment: str
    created_at: datetime | None = None
    expired_at: datetime | None = None
    expired_by: str | None = None
    active_during: tuple[str, ...] = ()
    reminded_at: datetime | None = None

    def end(self) -> datetime:
        """When the silence stops (expiry or its end, whichever is first)."""
        return min(self.ends_at, self.expired_at) if self.expired_at else self.ends_at

    def state(self, now: datetime, intervals: TimeIntervals | None = None) -> SilenceState:
        """Pending before its start, active inside its window, expired after.

        A recurring silence (active_during) is active inside its window only while one of its intervals
        matches now, pending otherwise; without `intervals` to look them up it never is.
        """
        if now >= self.end():
            return SilenceState.EXPIRED
        if now < self.starts_at:
            return SilenceState.PENDING
        if self.active_during and any_active(self.active_during, intervals or {}, now) is None:
            return SilenceState.PENDING
        return SilenceState.ACTIVE

    def active(self, now: datetime, intervals: TimeIntervals | None = None) -> bool:
        """True while it silences."""
        return self.state(now, intervals) is SilenceState.ACTIVE

    def matches(self, incident: Incident) -> bool:
        """True when every matcher holds for the incident."""
        return all(m.matches(incident) for m in self.matchers)

    def describe(self) -> str:
        """The matchers in one line (and the intervals of a recurring silence)."""
        text = ", ".join(str(m) for m in self.matchers)
        return text + (f" during {', '.join(self.active_during)}" if self.active_during else "")


def parse_when(text: str, now: datetime) -> datetime:
    """A moment from ISO 8601 (`2025-03-03T22:00:00+01:00`, `...Z`; naive means UTC) or a delay from now (`30m`)."""
    from erdu_tasks.escalation.policy import parse_duration

    value = (text or "").strip()
    if not value or value.lower() == "now":
        return now
    try:
        return now + parse_duration(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise SilenceError(f"{text!r} is neither a time (ISO 8601, e.g. 2025-03-03T22:00:00Z) "
                           "nor a delay (e.g. 30m, 2h)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def parse_matchers(texts: Iterable[str]) -> tuple[Matcher, ...]:
    """Matchers from their text form; at least one, at most MAX_MATCHERS."""
    matchers = tuple(Matcher.parse(t) for t in texts)
    if not matchers:
        raise SilenceError("a silence needs at least one matcher, e.g. service=orders-db")
    if len(matchers) > MAX_MATCHERS:
        raise SilenceError(f"at most {MAX_MATCHERS} matchers per silence")
    return matchers


def silencing(silences: Sequence[Silence], incident: Incident, now: datetime,
              intervals: TimeIntervals | None = None) -> Silence | None:
    """The active silence that covers the incident (the one ending last), or None."""
    hits = [s for s in silences if s.active(now, intervals) and s.matches(incident)]
    return max(hits, key=lambda s: s.end(), default=None)


# --------------------------------------------------------------------------- storage


def _row_to_silence(row: dict[str, Any]) -> Silence:
    matchers = tuple(Matcher.build(m["name"], m["op"], m["value"]) for m in row["matchers"])
    return Silence(row["id"], matchers, row["starts_at"], row["ends_at"], row["author"], row["comment"],
                   row["created_at"], row["expired_at"], row["expired_by"],
                   tuple(row.get("active_during") or ()), row.get("reminded_at"))


def new_silence_id() -> str:
    """SIL-xxxxxxxxxxxx."""
    return f"SIL-{secrets.token_hex(6)}"


def add_silence(
    conn: psycopg.Connection,
    matchers: Sequence[Matcher],
    *,
    starts_at: datetime,
    ends_at: datetime,
    author: str,
    comment: str,
    now: datetime,
    active_during: Sequence[str] = (),
    intervals: TimeIntervals | None = None,
    max_duration: timedelta = MAX_DURATION,
) -> Silence:
    """Store a new silence (a maintenance window when it starts later); refuses empty or past ones, ones
    longer than max_duration (escalation.silences.max_duration) and intervals the settings do not define."""
    if not matchers:
        raise SilenceError("a silence needs at least one matcher")
    if not author.strip():
        raise SilenceError("a silence needs an author")
    if not comment.strip():
        raise SilenceError("a silence needs a comment saying why")
    if ends_at <= starts_at:
        raise SilenceError(f"the silence ends ({ends_at.isoformat()}) before it starts ({starts_at.isoformat()})")
    if ends_at <= now:
        raise SilenceError(f"the silence would already be over ({ends_at.isoformat()} is in the past)")
    check_duration(starts_at, ends_at, max_duration)
    names = tuple(dict.fromkeys(n.strip() for n in active_during if n.strip()))
    unknown = [n for n in names if n not in (intervals or {})]
    if unknown:
        defined = ", ".join(sorted(intervals or {})) or "none"
        raise SilenceError(f"active_during names undefined time interval(s) {unknown}; "
                           f"escalation.time_intervals defines: {defined}")
    silence = Silence(new_silence_id(), tuple(matchers), starts_at, ends_at, author.strip()[:200],
                      comment.strip()[:2000], now, active_during=names)
    conn.execute(
        "INSERT INTO silences (id, matchers, starts_at, ends_at, author, comment, created_at, active_during)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (silence.id, Jsonb([m.to_dict() for m in matchers]), starts_at, ends_at, silence.author,
         silence.comment, now, Jsonb(list(names))),
    )
    return silence


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def check_duration(starts_at: datetime, ends_at: datetime, max_duration: timedelta = MAX_DURATION) -> None:
    """SilenceError when the silence would last longer than max_duration."""
    if ends_at - starts_at > max_duration:
        raise SilenceError(f"a silence may last at most {_human(max_duration)} (escalation.silences.max_duration); "
                           f"this one would last {_human(ends_at - starts_at)}")


def due_reminders(conn: psycopg.Connection, now: datetime, before: timedelta, limit: int = 100) -> list[Silence]:
    """Claim the silences ending within `before` that were not reminded about yet (marks them reminded)."""
    rows = conn.execute(
        "UPDATE silences SET reminded_at = %(now)s WHERE id IN ("
        " SELECT id FROM silences WHERE reminded_at IS NULL AND starts_at <= %(now)s"
        " AND least(ends_at, coalesce(expired_at, ends_at)) > %(now)s"
        " AND least(ends_at, coalesce(expired_at, ends_at)) <= %(until)s"
        " ORDER BY ends_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) RETURNING *",
        {"now": now, "until": now + before, "limit": limit},
    ).fetchall()
    return [_row_to_silence(r) for r in rows]


def held_by(conn: psycopg.Connection, silence_id: str) -> list[str]:
    """Ids of the incidents the silence holds now."""
    return [r["incident_id"] for r in conn.execute(
        "SELECT incident_id FROM incident_holds WHERE released_at IS NULL AND silence_id = %s ORDER BY id",
        (silence_id,))]


def get_silence(conn: psycopg.Connection, silence_id: str) -> Silence | None:
    """One silence by id."""
    row = conn.execute("SELECT * FROM silences WHERE id = %s", (silence_id,)).fetchone()
    return _row_to_silence(row) if row else None


def list_silences(conn: psycopg.Connection, *, now: datetime, include_expired: bool = False,
                  limit: int = 200) -> list[Silence]:
    """Silences, latest end first; expired ones only when asked."""
    where = "" if include_expired else \
        " WHERE ends_at > %(now)s AND (expired_at IS NULL OR expired_at > %(now)s)"
    rows = conn.execute(f"SELECT * FROM silences{where} ORDER BY ends_at DESC, id LIMIT %(limit)s",
                        {"now": now, "limit": limit}).fetchall()
    return [_row_to_silence(r) for r in rows]


def active_silences(conn: psycopg.Connection, now: datetime) -> list[Silence]:
    """Silences in force at now."""
    return active_silences_later(conn, now)()


def active_silences_later(conn: psycopg.Connection, now: datetime) -> Callable[[], list[Silence]]:
    """active_silences, sent now and read when called (see store.db.later)."""
    cur = conn.execute(
        "SELECT * FROM silences WHERE starts_at <= %(now)s AND ends_at > %(now)s"
        " AND (expired_at IS NULL OR expired_at > %(now)s)",
        {"now": now},
    )
    return later(lambda: [_row_to_silence(r) for r in cur.fetchall()])


def expire_silence(conn: psycopg.Connection, silence_id: str, *, who: str, now: datetime) -> Silence:
    """End a silence now; held incidents resume on the next sweep."""
    row = conn.execute(
        "UPDATE silences SET expired_at = %s, expired_by = %s WHERE id = %s"
        " AND (expired_at IS NULL OR expired_at > %s) AND ends_at > %s RETURNING *",
        (now, who, silence_id, now, now),
    ).fetchone()
    if row is None:
        existing = get_silence(conn, silence_id)
        if existing is None:
            raise SilenceError(f"no silence {silence_id}")
        raise SilenceError(f"silence {silence_id} is already over (ended {existing.end().isoformat()})")
    return _row_to_silence(row)


def held_counts(conn: psycopg.Connection, silence_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """silence id -> (incidents it holds now, their occurrences): silenced is still counted."""
    if not silence_ids:
        return {}
    rows = conn.execute(
        "SELECT h.silence_id, count(*) AS incidents, coalesce(sum(i.occurrences), 0) AS occurrences"
        " FROM incident_holds h JOIN incidents i ON i.id = h.incident_id"
        " WHERE h.released_at IS NULL AND h.silence_id = ANY(%s) GROUP BY h.silence_id",
        (list(silence_ids),),
    ).fetchall()
    return {r["silence_id"]: (int(r["incidents"]), int(r["occurrences"])) for r in rows}


@dataclass(frozen=True)
class Preview:
    """How many open incidents a silence with these matchers would cover now, and a few of them."""

    matched: int
    examined: int
    sample: tuple[str, ...]
    capped: bool     # more open incidents than were examined: `matched` is a lower bound


def preview(conn: psycopg.Connection, matchers: Sequence[Matcher], *, limit: int = 20_000,
            sample: int = 10) -> Preview:
    """The open incidents that `matchers` match, judged by Silence.matches (the rule the gate applies)."""
    probe = Silence("preview", tuple(matchers), datetime.min.replace(tzinfo=timezone.utc),
                    datetime.max.replace(tzinfo=timezone.utc), "", "")
    rows = conn.execute(
        "SELECT id, fingerprint, title, severity, status, source, service, affected_services, tags, labels"
        " FROM incidents WHERE status NOT IN ('resolved', 'closed') ORDER BY created_at DESC, id LIMIT %s",
        (limit + 1,)).fetchall()
    hits = [r["id"] for r in rows[:limit] if probe.matches(Incident(
        id=r["id"], fingerprint=r["fingerprint"], title=r["title"], description="", severity=Severity(r["severity"]),
        status=Status(r["status"]), source=r["source"], service=r["service"],
        affected_services=list(r["affected_services"] or []), tags=list(r["tags"] or []),
        labels=dict(r["labels"] or {})))]
    return Preview(len(hits), min(len(rows), limit), tuple(hits[:sample]), len(rows) > limit)
