"""Heartbeats (dead-man switches): what stopped reporting becomes an incident; its return resolves it.

A heartbeat is a row in `heartbeats`: a period, a grace and its last ping. Declared heartbeats
(settings `heartbeats.checks`) exist before their first ping and are late `period + grace` after they
were first declared if nothing pinged; an unknown name that pings is created with
`heartbeats.defaults` (unless `create_on_ping` is false, when the ping is refused).

- `ping` records a ping; when the heartbeat was late and its incident is still open, the incident is
  resolved in the same transaction (by `heartbeat:NAME`, with the gap as its root cause) and its id
  returned, so the caller hands it to the resolver (report, close) after the commit.
- `check` finds the heartbeats late at `now` and reports each through the one ingest entry (dedup
  key `heartbeat:NAME`, a namespace no producer may use), once per lateness.
- `check_beat` is the same for ERDU's own beat: the reconciler's pass pings `erdu:beat`
  (`names.BEAT_HEARTBEAT`), and the API process calls `check_beat` on its own clock, so a stopped beat
  (or a stopped monitor worker) is an incident even though beat is what runs `check`.

Every function takes `now`; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from erdu_tasks.errors import ErduError
from erdu_tasks.ingest.accept import IngestRuntime, accept
from erdu_tasks.model import OPEN_STATUSES, Event, Severity, Status
from erdu_tasks.names import BEAT_HEARTBEAT
from erdu_tasks.settings.heartbeats import HEARTBEAT_NAME, HeartbeatsConfig, HeartbeatSpec
from erdu_tasks.store import incidents as store

SOURCE = "heartbeat"
DEDUP_PREFIX = "heartbeat:"
BEAT_DEDUP_KEY = "erdu:beat-stopped"
Notify = Callable[[str], None]


class UnknownHeartbeat(ErduError):
    """A ping for a name that is neither declared nor allowed to create itself."""


class BadHeartbeatName(ErduError):
    """A heartbeat name outside the allowed characters."""


@dataclass(frozen=True)
class Heartbeat:
    """One heartbeat and its state at a moment."""

    name: str
    period: timedelta
    grace: timedelta
    declared: bool
    created_at: datetime
    last_seen: datetime | None
    pings: int
    state: str                 # new (never pinged, not late yet), up, late
    late_since: datetime | None
    incident_id: str | None
    last_source: str | None = None

    @property
    def due_at(self) -> datetime:
        """When it becomes late without another ping."""
        return (self.last_seen or self.created_at) + self.period + self.grace

    def state_at(self, now: datetime) -> str:
        """new / up / late at now (late as soon as due_at has passed)."""
        if now >= self.due_at:
            return "late"
        return "up" if self.last_seen is not None else "new"

    def as_dict(self, now: datetime) -> dict[str, Any]:
        """JSON form for the API and the CLI."""
        return {"name": self.name, "state": self.state_at(now), "last_seen": _iso(self.last_seen),
                "due_at": _iso(self.due_at), "period_seconds": self.period.total_seconds(),
                "grace_seconds": self.grace.total_seconds(), "declared": self.declared, "pings": self.pings,
                "late_since": _iso(self.late_since), "incident_id": self.incident_id,
                "last_source": self.last_source}


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _row(row: dict[str, Any]) -> Heartbeat:
    return Heartbeat(row["name"], timedelta(seconds=row["period_seconds"]), timedelta(seconds=row["grace_seconds"]),
                     row["declared"], row["created_at"], row["last_seen"], int(row["pings"]), row["state"],
                     row["late_since"], row["incident_id"], row["last_source"])


def check_name(name: str) -> str:
    """The name, or BadHeartbeatName."""
    if not HEARTBEAT_NAME.fullmatch(name or ""):
        raise BadHeartbeatName(f"heartbeat name {name!r} must be letters, digits, '_', '-' or '.' "
                               "(starting with a letter or digit, at most 128)")
    return name


def _upsert(conn: psycopg.Connection, name: str, spec: HeartbeatSpec, *, declared: bool, now: datetime) -> None:
    conn.execute(
        "INSERT INTO heartbeats (name, period_seconds, grace_seconds, declared, created_at)"
        " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET period_seconds = EXCLUDED.period_seconds,"
        " grace_seconds = EXCLUDED.grace_seconds, declared = EXCLUDED.declared OR heartbeats.declared",
        (name, spec.period.total_seconds(), spec.grace.total_seconds(), declared, now))


def sync_declared(conn: psycopg.Connection, config: HeartbeatsConfig, now: datetime) -> None:
    """Make sure every declared heartbeat has its row with the configured period and grace."""
    for name in sorted(config.checks):
        _upsert(conn, name, config.checks[name], declared=True, now=now)


def _load(conn: psycopg.Connection, name: str) -> Heartbeat | None:
    row = conn.execute("SELECT * FROM heartbeats WHERE name = %s FOR UPDATE", (name,)).fetchone()
    return _row(row) if row else None


@dataclass(frozen=True)
class PingResult:
    """What a ping did: the heartbeat after it, whether it was created, and the incident it resolved."""

    heartbeat: Heartbeat
    created: bool
    resolved: str | None


def ping(conn: psycopg.Connection, name: str, config: HeartbeatsConfig, *, now: datetime, source: str = "api",
         internal: bool = False) -> PingResult:
    """Record a ping (in the caller's transaction); a late heartbeat's open incident is resolved.

    The caller hands `resolved` to the resolver after the commit. `internal` lets ERDU's own names
    (`erdu:beat`) through, with the beat watch's period.
    """
    if internal:
        max_age = config.beat.max_age or timedelta(seconds=60)
        spec = HeartbeatSpec(period=max_age, grace=timedelta(0))
    else:
        check_name(name)
        spec = config.spec_for(name)
    existing = _load(conn, name)
    if existing is None:
        if spec is None:
            raise UnknownHeartbeat(f"no heartbeat {name!r}: declare it under heartbeats.checks, or set "
                                   "heartbeats.create_on_ping: true")
        _upsert(conn, name, spec, declared=name in config.checks, now=now)
        existing = _load(conn, name)
        created = True
    else:
        created = False
    assert existing is not None
    resolved = None
    if existing.state == "late" and existing.incident_id:
        resolved = _resolve(conn, existing, now, source)
    row = conn.execute(
        "UPDATE heartbeats SET last_seen = greatest(coalesce(last_seen, %(now)s), %(now)s), pings = pings + 1,"
        " last_source = %(source)s, state = 'up', late_since = NULL, incident_id = NULL"
        " WHERE name = %(name)s RETURNING *",
        {"now": now, "source": source[:200], "name": name}).fetchone()
    return PingResult(_row(row), created, resolved)


def _resolve(conn: psycopg.Connection, beat: Heartbeat, now: datetime, source: str) -> str | None:
    incident = store.get_incident(conn, beat.incident_id, for_update=True)
    if incident is None or incident.status not in OPEN_STATUSES:
        return None
    late_for = (now - (beat.late_since or now)).total_seconds()
    since = beat.last_seen.isoformat(timespec="seconds") if beat.last_seen else "never"
    line = (f"heartbeat {beat.name} stopped (last ping {since}, expected every {beat.period.total_seconds():.0f} s "
            f"with {beat.grace.total_seconds():.0f} s grace) and returned at {now.isoformat(timespec='seconds')}, "
            f"{late_for:.0f} s after it was found late")
    updates = {"resolved_by": f"{SOURCE}:{beat.name}", "auto_resolved": False,
               "root_cause": incident.root_cause or line}
    store.transition(conn, incident.id, expected=[incident.status], to=Status.RESOLVED, actor=f"{SOURCE}:{beat.name}",
                     what=f"resolved: {line}", updates=updates,
                     details={"heartbeat": beat.name, "source": source, "late_seconds": round(late_for, 1)})
    return incident.id


def list_heartbeats(conn: psycopg.Connection) -> list[Heartbeat]:
    """Every heartbeat, ERDU's own included, by name."""
    return [_row(r) for r in conn.execute("SELECT * FROM heartbeats ORDER BY name")]


def _event(beat: Heartbeat, spec: HeartbeatSpec, now: datetime, *, dedup_key: str, message: str) -> Event:
    return Event(source=SOURCE, message=message, severity=spec.severity, service=spec.service,
                 labels={"heartbeat": beat.name}, occurred_at=now, dedup_key=dedup_key,
                 details={"heartbeat": beat.name, "last_seen": _iso(beat.last_seen), "due_at": _iso(beat.due_at),
                          "period_seconds": beat.period.total_seconds(),
                          "grace_seconds": beat.grace.total_seconds()})


def _late_message(beat: Heartbeat, now: datetime) -> str:
    if beat.last_seen is None:
        return (f"Heartbeat {beat.name} is late\nnever pinged since it was declared at "
                f"{beat.created_at.isoformat(timespec='seconds')} (expected every {beat.period.total_seconds():.0f} s,"
                f" {beat.grace.total_seconds():.0f} s grace)")
    ago = (now - beat.last_seen).total_seconds()
    return (f"Heartbeat {beat.name} is late\nlast ping {beat.last_seen.isoformat(timespec='seconds')} ({ago:.0f} s "
            f"ago; expected every {beat.period.total_seconds():.0f} s, {beat.grace.total_seconds():.0f} s grace)")


def _report_late(conn: psycopg.Connection, beat: Heartbeat, event: Event, rt: IngestRuntime,
                 now: datetime) -> tuple[str, bool] | None:
    result = accept(conn, [event], rt)
    outcome = result.for_dedup_key(event.dedup_key or "")
    incident_id = outcome.incident_id if outcome else None
    conn.execute("UPDATE heartbeats SET state = 'late', late_since = %s, incident_id = %s WHERE name = %s",
                 (now, incident_id, beat.name))
    if outcome is None:
        return None
    return outcome.incident_id, outcome.created


def check(db: Any, config: HeartbeatsConfig, rt: IngestRuntime, *, now: datetime,
          notify: Notify = lambda incident_id: None) -> list[dict[str, Any]]:
    """Report every heartbeat late at `now` (once per lateness) as an incident; returns what it found.

    ERDU's own heartbeat is left to `check_beat` (the API watches it). A heartbeat whose row says it
    was declared but that the settings no longer list is not checked.
    """
    found: list[dict[str, Any]] = []
    created: list[str] = []
    with db.transaction() as conn:
        sync_declared(conn, config, now)
        rows = conn.execute(
            "SELECT * FROM heartbeats WHERE state <> 'late' AND name <> %s ORDER BY name FOR UPDATE SKIP LOCKED",
            (BEAT_HEARTBEAT,)).fetchall()
        for beat in map(_row, rows):
            if beat.state_at(now) != "late":
                continue
            spec = config.checks.get(beat.name) if beat.declared else config.defaults
            if spec is None:
                continue
            event = _event(beat, spec, now, dedup_key=DEDUP_PREFIX + beat.name, message=_late_message(beat, now))
            reported = _report_late(conn, beat, event, rt, now)
            found.append({"name": beat.name, "incident_id": reported[0] if reported else None})
            if reported and reported[1]:
                created.append(reported[0])
    for incident_id in created:
        notify(incident_id)
    return found


def check_beat(db: Any, config: HeartbeatsConfig, rt: IngestRuntime, *, now: datetime,
               notify: Notify = lambda incident_id: None) -> str | None:
    """The API's watch: an incident when beat's reconciler last ran more than `beat.max_age` ago.

    Nothing happens before beat's first pass (no row yet) or with the watch off. Returns the incident id.
    """
    max_age = config.beat.max_age
    if max_age is None:
        return None
    with db.transaction() as conn:
        row = conn.execute("SELECT * FROM heartbeats WHERE name = %s FOR UPDATE SKIP LOCKED",
                           (BEAT_HEARTBEAT,)).fetchone()
        if row is None:
            return None
        beat = _row(row)
        if beat.state == "late" or beat.last_seen is None or now - beat.last_seen <= max_age:
            return None
        ago = (now - beat.last_seen).total_seconds()
        message = (f"Celery beat has stopped\nthe reconciler last ran at {beat.last_seen.isoformat(timespec='seconds')}"
                   f" ({ago:.0f} s ago, more than {max_age.total_seconds():.0f} s); monitors, the escalation sweeper "
                   "and the reconciler are not running (check `erdu beat` and the monitor worker)")
        spec = HeartbeatSpec(period=max_age, grace=timedelta(0), severity=Severity.P1)
        event = _event(beat, spec, now, dedup_key=BEAT_DEDUP_KEY, message=message)
        reported = _report_late(conn, beat, event, rt, now)
    if reported and reported[1]:
        notify(reported[0])
    return reported[0] if reported else None


def states(heartbeats: Sequence[Heartbeat], now: datetime) -> list[dict[str, Any]]:
    """Each heartbeat as a dict with its state at now."""
    return [b.as_dict(now) for b in heartbeats]
