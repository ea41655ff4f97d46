"""Incident persistence: upsert with dedup, compare-and-set status changes, the timeline."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from erdu_tasks.store.db import later

from erdu_tasks.model import (
    Incident,
    Severity,
    Status,
    TimelineEntry,
    check_transition,
    new_incident_id,
)

_CLOSED_SQL = "status NOT IN ('resolved', 'closed')"
OPEN_SQL = _CLOSED_SQL
"""The condition an open incident meets (the partial unique index's), for queries elsewhere in the store."""

# Columns a stage may write together with its status change.
_WRITABLE = {
    "severity", "title", "description", "affected_services", "tags", "assessment", "diagnosis", "fix",
    "root_cause", "resolution_actions", "lessons_learned", "follow_ups", "resolved_by", "auto_resolved",
    "parent_id", "report_path", "error_details", "labels", "related",
}
_JSON_COLUMNS = {"affected_services", "tags", "assessment", "diagnosis", "fix", "resolution_actions",
                 "lessons_learned", "follow_ups", "error_details", "labels", "samples", "related"}
# Timestamp column stamped when an incident enters a status (first time only).
_STAMP = {
    Status.ACKNOWLEDGED: "acknowledged_at",
    Status.RESOLVED: "resolved_at",
    Status.ESCALATED: "escalated_at",
    Status.CLOSED: "closed_at",
}


@dataclass(frozen=True)
class NewIncident:
    """What ingest knows about an incident it is about to open or bump."""

    fingerprint: str
    template: str
    title: str
    description: str
    severity: Severity
    source: str
    service: str | None
    host: str | None
    affected_services: list[str]
    tags: list[str]
    labels: dict[str, str]
    error_details: dict[str, Any]
    samples: list[str]
    count: int
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class UpsertResult:
    """The incident an event landed on, whether it was opened just now, and the severity it rose from."""

    incident_id: str
    created: bool
    occurrences: int
    raised_from: Severity | None = None


def _value(column: str, value: Any) -> Any:
    if column == "related" and value is None:   # NULL: not searched yet (the other JSON columns are NOT NULL)
        return None
    if column in _JSON_COLUMNS:
        return Jsonb(value)
    if isinstance(value, (Severity, Status)):
        return value.value
    return value


def as_jsonb(value: Any) -> Any:
    """What `value`, stored in a jsonb column (as Jsonb writes it), reads back as.

    jsonb keeps an object's keys shorter first, then in byte order (not as written), and a number as a
    decimal: a float that JSON writes with a positive exponent (1e+20) comes back as the integer it is, and
    -0.0 as 0.0. For what is known before it is stored (a report built from rows not read back)."""
    return _jsonb_order(json.loads(json.dumps(value)))


def _jsonb_order(value: Any) -> Any:
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return {k: _jsonb_order(value[k]) for k in keys}
    if isinstance(value, list):
        return [_jsonb_order(v) for v in value]
    if isinstance(value, float):
        text = repr(value)
        return int(Decimal(text)) if "e+" in text else value + 0.0   # + 0.0: -0.0 becomes 0.0
    return value


def upsert_incident(conn: psycopg.Connection, new: NewIncident) -> UpsertResult:
    """Open an incident for the fingerprint, or add the count to the open one (atomic in Postgres)."""
    return upsert_incident_later(conn, new)[1]()


def upsert_incident_later(conn: psycopg.Connection, new: NewIncident) -> tuple[str, Callable[[], UpsertResult]]:
    """upsert_incident, sent now: the id the incident gets if this opens it, and the reader of the result.

    Statements about the new incident can be sent after it by that id before the result is read: if the
    event landed on an open incident instead, no row has the id and they change nothing."""
    incident_id = new_incident_id()
    cur = conn.execute(
        f"""
        INSERT INTO incidents (id, fingerprint, template, title, description, severity, status, source,
                               service, host, affected_services, tags, labels, error_details, samples,
                               occurrences, created_at, last_seen, status_changed_at)
        VALUES (%(id)s, %(fingerprint)s, %(template)s, %(title)s, %(description)s, %(severity)s, 'detected',
                %(source)s, %(service)s, %(host)s, %(affected)s, %(tags)s, %(labels)s, %(details)s, %(samples)s,
                %(count)s, now(), coalesce(%(occurred)s, now()), now())
        ON CONFLICT (fingerprint) WHERE {_CLOSED_SQL}
        DO UPDATE SET occurrences = incidents.occurrences + EXCLUDED.occurrences,
                      last_seen = greatest(incidents.last_seen, EXCLUDED.last_seen)
        RETURNING id, (xmax = 0) AS created, occurrences
        """,
        {
            "id": incident_id, "fingerprint": new.fingerprint, "template": new.template,
            "title": new.title, "description": new.description, "severity": new.severity.value,
            "source": new.source, "service": new.service, "host": new.host,
            "affected": Jsonb(new.affected_services), "tags": Jsonb(new.tags), "labels": Jsonb(new.labels),
            "details": Jsonb(new.error_details), "samples": Jsonb(new.samples[:10]), "count": new.count,
            "occurred": new.occurred_at,
        },
    )

    def result() -> UpsertResult:
        row = cur.fetchone()
        assert row is not None
        raised_from = None if row["created"] else raise_severity(conn, row["id"], new.severity)
        return UpsertResult(row["id"], bool(row["created"]), int(row["occurrences"]), raised_from)

    return incident_id, later(result)


def raise_severity(conn: psycopg.Connection, incident_id: str, severity: Severity) -> Severity | None:
    """An open incident's severity only rises: set it to `severity` if that is worse; the old one, or None.

    The upsert above holds the row lock, so no other ingest can lower or raise it in between.
    """
    row = conn.execute(
        "UPDATE incidents AS i SET severity = %s FROM (SELECT id, severity FROM incidents WHERE id = %s) AS old"
        " WHERE i.id = old.id AND i.severity > %s RETURNING old.severity",
        (severity.value, incident_id, severity.value),
    ).fetchone()
    return Severity(row["severity"]) if row else None


def add_timeline(
    conn: psycopg.Connection,
    incident_id: str,
    *,
    actor: str,
    what: str,
    worker: str | None = None,
    from_status: Status | None = None,
    to_status: Status | None = None,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Append one line to the incident's timeline, stamped `at` (else the server's clock as it is inserted)."""
    conn.execute(
        "INSERT INTO incident_timeline (incident_id, actor, worker, from_status, to_status, what, details, at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, coalesce(%s, clock_timestamp()))",
        (incident_id, actor, worker, from_status and from_status.value, to_status and to_status.value,
         what, Jsonb(details or {}), at),
    )


def timeline_entry(*, at: datetime, actor: str, what: str, worker: str | None = None,
                   from_status: Status | None = None, to_status: Status | None = None,
                   details: dict[str, Any] | None = None) -> TimelineEntry:
    """The line add_timeline (or transition) writes with these arguments, as timeline() reads it back."""
    return TimelineEntry(at=at, actor=actor, worker=worker, from_status=from_status and from_status.value,
                         to_status=to_status and to_status.value, what=what, details=as_jsonb(details or {}))


@dataclass(frozen=True)
class Line:
    """One line for add_timeline_lines."""

    actor: str
    what: str
    worker: str | None = None
    from_status: Status | None = None
    to_status: Status | None = None
    details: dict[str, Any] | None = None


def add_timeline_lines(conn: psycopg.Connection, incident_id: str, lines: Sequence[Line]) -> None:
    """Append lines to the incident's timeline, in their order, in one statement."""
    if len(lines) <= 1:
        for line in lines:
            add_timeline(conn, incident_id, actor=line.actor, what=line.what, worker=line.worker,
                         from_status=line.from_status, to_status=line.to_status, details=line.details)
        return
    conn.execute(
        "INSERT INTO incident_timeline (incident_id, actor, worker, from_status, to_status, what, details)"
        " SELECT %s, actor, worker, from_status, to_status, what, details"
        " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::jsonb[])"
        " WITH ORDINALITY AS l (actor, worker, from_status, to_status, what, details, n) ORDER BY n",
        (incident_id, [x.actor for x in lines], [x.worker for x in lines],
         [x.from_status and x.from_status.value for x in lines], [x.to_status and x.to_status.value for x in lines],
         [x.what for x in lines], [Jsonb(x.details or {}) for x in lines]),
    )


def transition(
    conn: psycopg.Connection,
    incident_id: str,
    *,
    expected: Iterable[Status],
    to: Status,
    actor: str,
    what: str,
    worker: str | None = None,
    updates: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
    status_now: Status | None = None,
    at: datetime | None = None,
) -> Status | None:
    """Compare-and-set the status; returns the previous status, or None if the incident had moved on.

    The status change and its timeline line are one statement: the line is written only if the status
    changed, stamped `at` (else the server's clock as it is written). `status_now` is the status of an
    incident this transaction holds locked (read FOR UPDATE and kept up to date since): the compare-and-set
    stays in the statement, but its answer is known, so the statement is not waited for (a pipelined
    connection sends it with the next read or the commit).
    """
    expected = [Status(s) for s in expected]
    sql, params = _transition_statement(incident_id, expected=expected, to=to, actor=actor, what=what,
                                        worker=worker, updates=updates, details=details, at=at)
    if status_now is not None and status_now not in expected:
        return None
    moved = _moved_later(conn.execute(sql, params))
    return status_now if status_now is not None else moved()


def transition_later(
    conn: psycopg.Connection,
    incident_id: str,
    *,
    expected: Iterable[Status],
    to: Status,
    actor: str,
    what: str,
    worker: str | None = None,
    updates: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> Callable[[], Status | None]:
    """transition, sent now; called, the statement's own answer: the previous status, or None if it did not
    move (read after the commit, it costs no round trip of its own)."""
    sql, params = _transition_statement(incident_id, expected=[Status(s) for s in expected], to=to, actor=actor,
                                        what=what, worker=worker, updates=updates, details=details, at=at)
    return _moved_later(conn.execute(sql, params))


def _moved_later(cur: psycopg.Cursor) -> Callable[[], Status | None]:
    def moved() -> Status | None:
        row = cur.fetchone()
        return Status(row["previous"]) if row is not None else None

    return later(moved)


def _transition_statement(incident_id: str, *, expected: list[Status], to: Status, actor: str, what: str,
                          worker: str | None, updates: dict[str, Any] | None, details: dict[str, Any] | None,
                          at: datetime | None) -> tuple[str, dict[str, Any]]:
    """The compare-and-set statement of transition, checked (the transitions allowed, the columns writable)."""
    for src in expected:
        check_transition(src, to)
    updates = dict(updates or {})
    unknown = set(updates) - _WRITABLE
    if unknown:
        raise ValueError(f"not writable with a status change: {sorted(unknown)}")
    sets = ["status = %(to)s", "status_changed_at = now()", "redrives = 0"]
    params: dict[str, Any] = {"to": to.value, "id": incident_id, "expected": [s.value for s in expected],
                              "actor": actor, "worker": worker, "what": what, "details": Jsonb(details or {}),
                              "at": at}
    stamp = _STAMP.get(to)
    if stamp:
        sets.append(f"{stamp} = coalesce({stamp}, now())")
    for column, value in updates.items():
        sets.append(f"{column} = %(u_{column})s")
        params[f"u_{column}"] = _value(column, value)
    sql = f"""
        WITH moved AS (
            UPDATE incidents AS i SET {", ".join(sets)}
            FROM (SELECT id, status FROM incidents WHERE id = %(id)s FOR UPDATE) AS old
            WHERE i.id = old.id AND old.status = ANY(%(expected)s)
            RETURNING old.status AS previous
        ), line AS (
            INSERT INTO incident_timeline (incident_id, actor, worker, from_status, to_status, what, details, at)
            SELECT %(id)s, %(actor)s, %(worker)s, previous, %(to)s, %(what)s, %(details)s,
                   coalesce(%(at)s, clock_timestamp()) FROM moved
        )
        SELECT previous FROM moved
        """
    return sql, params


def after_transition(incident: Incident, *, to: Status, now: datetime,
                     updates: dict[str, Any] | None = None) -> Incident:
    """The incident as get_incident reads it back after transition moved it to `to` with these updates, in
    a transaction whose now() is `now` (its timeline as it was: add the lines written with it)."""
    moved: dict[str, Any] = {"status": to, "status_changed_at": now}
    stamp = _STAMP.get(to)
    if stamp:
        moved[stamp] = getattr(incident, stamp) or now
    for column, value in (updates or {}).items():
        moved[column] = (as_jsonb(value) if column in _JSON_COLUMNS and value is not None
                         else Severity(value) if column == "severity" else value)
    return dataclasses.replace(incident, **{k: v for k, v in moved.items() if k in _INCIDENT_FIELDS},
                               timeline=list(incident.timeline))


MOVED_ON = "EU409"
"""The SQLSTATE of expect_status's failure (migration 0102)."""


def expect_status(conn: psycopg.Connection, incident_id: str, expected: Iterable[Status]) -> None:
    """Lock the incident and fail the transaction unless it is in one of `expected`; not waited for.

    For a stage that acted outside its transaction and settles in one round trip: everything sent after
    this applies only if the incident is still where the stage left it. Otherwise the transaction fails
    at its next read or its commit with an error that moved_on() recognises, and nothing sent after it
    is applied."""
    conn.execute("SELECT erdu_expect_status(%s, %s)", (incident_id, [Status(s).value for s in expected]))


def moved_on(exc: BaseException) -> bool:
    """True for expect_status's failure: the incident is no longer in the status the transaction expected."""
    return isinstance(exc, psycopg.Error) and exc.sqlstate == MOVED_ON


def update_fields(conn: psycopg.Connection, incident_id: str, updates: dict[str, Any]) -> None:
    """Write fields without a status change (e.g. the fixer's progress)."""
    unknown = set(updates) - _WRITABLE
    if unknown:
        raise ValueError(f"not writable: {sorted(unknown)}")
    if not updates:
        return
    sets = ", ".join(f"{c} = %({c})s" for c in updates)
    conn.execute(f"UPDATE incidents SET {sets} WHERE id = %(id)s",
                 {**{c: _value(c, v) for c, v in updates.items()}, "id": incident_id})


def merge_fix(conn: psycopg.Connection, incident_id: str, fix: dict[str, Any]) -> None:
    """Merge keys into the incident's `fix` record as stored (keys written meanwhile, a capture, stay)."""
    conn.execute("UPDATE incidents SET fix = coalesce(fix, '{}'::jsonb) || %s WHERE id = %s",
                 (Jsonb(fix), incident_id))


_INCIDENT_FIELDS = {f.name for f in fields(Incident)} - {"timeline"}


def _to_incident(row: dict[str, Any]) -> Incident:
    data = {k: v for k, v in row.items() if k in _INCIDENT_FIELDS}
    data["severity"] = Severity(data["severity"])
    data["status"] = Status(data["status"])
    return Incident(**data)


def get_incident(conn: psycopg.Connection, incident_id: str, *, with_timeline: bool = False,
                 for_update: bool = False) -> Incident | None:
    """Load one incident (optionally locked, optionally with its timeline)."""
    return get_incident_later(conn, incident_id, with_timeline=with_timeline, for_update=for_update)()


def get_incident_later(conn: psycopg.Connection, incident_id: str, *, with_timeline: bool = False,
                       for_update: bool = False) -> Callable[[], Incident | None]:
    """get_incident with its statements (the row, the timeline) sent now, read when called (see db.later)."""
    lock = " FOR UPDATE" if for_update else ""
    cur = conn.execute(f"SELECT * FROM incidents WHERE id = %s{lock}", (incident_id,))
    lines = timeline_later(conn, incident_id) if with_timeline else None

    def incident() -> Incident | None:
        row = cur.fetchone()
        if row is None:
            return None
        found = _to_incident(row)
        if lines is not None:
            found.timeline = lines()
        return found

    return later(incident)


def timeline(conn: psycopg.Connection, incident_id: str) -> list[TimelineEntry]:
    """The incident's history, oldest first."""
    return timeline_later(conn, incident_id)()


def timeline_later(conn: psycopg.Connection, incident_id: str) -> Callable[[], list[TimelineEntry]]:
    """timeline, sent now and read when called (see db.later)."""
    cur = conn.execute(
        "SELECT at, actor, worker, from_status, to_status, what, details FROM incident_timeline"
        " WHERE incident_id = %s ORDER BY id",
        (incident_id,),
    )
    return later(lambda: [TimelineEntry(**r) for r in cur.fetchall()])


class BadCursor(ValueError):
    """A paging cursor that this store did not hand out (or that was altered)."""


def encode_cursor(incident: Incident) -> str:
    """The opaque cursor of the page after this incident (newest first: created_at, then id, descending)."""
    assert incident.created_at is not None
    raw = json.dumps([incident.created_at.isoformat(), incident.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of a cursor from encode_cursor; BadCursor otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, incident_id = json.loads(raw)
        at = datetime.fromisoformat(created)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise BadCursor("not a cursor this server handed out") from None
    if not isinstance(incident_id, str) or at.tzinfo is None or len(incident_id) > 200:
        raise BadCursor("not a cursor this server handed out")
    return at, incident_id


ORDERS = {
    "newest": "created_at DESC, id DESC",
    "oldest": "created_at, id",
    "severity": "severity, created_at, id",   # P1 first, and within a severity the longest waiting first
}
"""The orders list_incidents sorts by."""


def list_incidents(
    conn: psycopg.Connection,
    *,
    statuses: Sequence[str] | None = None,
    severities: Sequence[str] | None = None,
    service: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
    after: str | None = None,
    order: str = "newest",
) -> list[Incident]:
    """Incidents, newest first (or in another ORDERS order), filtered.

    `after` (a cursor from encode_cursor of the last row of the previous page) pages by key: the index on
    (created_at, id) is read from that row on, so a deep page costs what the first does. `offset` is kept
    for the API's offset paging; it reads and skips every row before the page.
    """
    where, params = ["true"], {}
    if statuses:
        where.append("status = ANY(%(statuses)s)")
        params["statuses"] = list(statuses)
    if severities:
        where.append("severity = ANY(%(severities)s)")
        params["severities"] = list(severities)
    if service:
        where.append("(service = %(service)s OR affected_services ? %(service)s)")
        params["service"] = service
    if since:
        where.append("created_at >= %(since)s")
        params["since"] = since
    if after is not None:
        params["after_at"], params["after_id"] = decode_cursor(after)
        where.append("(created_at, id) < (%(after_at)s, %(after_id)s)")
    if order not in ORDERS or after is not None and order != "newest":
        raise ValueError(f"order must be one of {', '.join(ORDERS)} (cursors page newest first only)")
    params.update(limit=limit, offset=offset)
    paging = " OFFSET %(offset)s" if offset else ""
    rows = conn.execute(
        f"SELECT * FROM incidents WHERE {' AND '.join(where)} ORDER BY {ORDERS[order]}"
        f" LIMIT %(limit)s{paging}",
        params,
    ).fetchall()
    return [_to_incident(r) for r in rows]


def count_open(conn: psycopg.Connection) -> int:
    """How many incidents are open now (from the partial index of open incidents)."""
    return count_open_later(conn)()


def count_open_later(conn: psycopg.Connection) -> Callable[[], int]:
    """count_open, sent now and read when called (see db.later)."""
    cur = conn.execute(f"SELECT count(*) AS n FROM incidents WHERE {_CLOSED_SQL}")
    return later(lambda: int((cur.fetchone() or {"n": 0})["n"]))


def open_candidates(conn: psycopg.Connection, *, severities: Sequence[str], services: Sequence[str] | None,
                    limit: int = 500) -> list[Incident]:
    """Open top-level incidents of these severities, oldest first, with only what inhibition looks at.

    services None: of any service; else only those whose service or affected services include one of them.
    Read from the partial index of open incidents.
    """
    if not severities or services is not None and not services:
        return []
    where = [_CLOSED_SQL, "parent_id IS NULL", "severity = ANY(%(severities)s)"]
    params: dict[str, Any] = {"severities": list(severities), "limit": limit}
    if services is not None:
        where.append("(service = ANY(%(services)s) OR affected_services ?| %(services)s)")
        params["services"] = list(services)
    rows = conn.execute(
        "SELECT id, fingerprint, title, severity, status, source, service, affected_services, created_at, parent_id"
        f" FROM incidents WHERE {' AND '.join(where)} ORDER BY created_at, id LIMIT %(limit)s",
        params,
    ).fetchall()
    return [Incident(id=r["id"], fingerprint=r["fingerprint"], title=r["title"], description="",
                     severity=Severity(r["severity"]), status=Status(r["status"]), source=r["source"],
                     service=r["service"], affected_services=list(r["affected_services"] or []),
                     created_at=r["created_at"], parent_id=r["parent_id"]) for r in rows]


def record_escalation(conn: psycopg.Connection, incident_id: str, *, reason: str, stage: str | None,
                      level: int = 1) -> int:
    """Store an escalation record; returns its id."""
    row = conn.execute(
        "INSERT INTO escalations (incident_id, level, reason, stage) VALUES (%s, %s, %s, %s) RETURNING id",
        (incident_id, level, reason, stage),
    ).fetchone()
    return int(row["id"])


def record_failed_task(conn: psycopg.Connection, *, task_id: str, task_name: str, stage: str | None,
                       incident_id: str | None, error: str, worker: str | None) -> None:
    """Keep a failed stage task so `erdu failed retry` can re-drive it."""
    if incident_id is not None:
        exists = conn.execute("SELECT 1 FROM incidents WHERE id = %s", (incident_id,)).fetchone()
        if exists is None:
            incident_id = None
    conn.execute(
        "INSERT INTO failed_tasks (task_id, task_name, stage, incident_id, error, worker)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (task_id, task_name, stage, incident_id, error[:4000], worker),
    )


def record_rejected(conn: psycopg.Connection, *, source: str | None, error: str, payload: str) -> int:
    """Keep a refused event with the reason; returns its id."""
    row = conn.execute(
        "INSERT INTO rejected_events (source, error, payload) VALUES (%s, %s, %s) RETURNING id",
        (source, error[:4000], payload[:100_000].replace("\x00", "\\x00")),
    ).fetchone()
    return int(row["id"])


def stage_started(conn: psycopg.Connection, incident_id: str, stage: str) -> int:
    """Count a start of (incident, stage); returns how many earlier starts never finished (crashes)."""
    return stage_started_later(conn, incident_id, stage)()


def stage_started_later(conn: psycopg.Connection, incident_id: str, stage: str) -> Callable[[], int]:
    """stage_started, sent now and read when called (see db.later)."""
    cur = conn.execute(
        "INSERT INTO stage_runs (incident_id, stage, starts) VALUES (%s, %s, 1)"
        " ON CONFLICT (incident_id, stage) DO UPDATE SET starts = stage_runs.starts + 1"
        " RETURNING starts, finishes",
        (incident_id, stage),
    )

    def crashes() -> int:
        row = cur.fetchone()
        return int(row["starts"]) - int(row["finishes"]) - 1

    return later(crashes)


def stage_finished(conn: psycopg.Connection, incident_id: str, stage: str) -> None:
    """Count a finish of (incident, stage): the start was not a crash."""
    conn.execute(
        "UPDATE stage_runs SET finishes = least(starts, finishes + 1) WHERE incident_id = %s AND stage = %s",
        (incident_id, stage),
    )


def take_receipt(conn: psycopg.Connection, message_id: str) -> bool:
    """Record that a broker message was ingested; False if it already was (a redelivery)."""
    return take_receipt_later(conn, message_id)()


def take_receipt_later(conn: psycopg.Connection, message_id: str) -> Callable[[], bool]:
    """take_receipt, sent now and read when called (see db.later)."""
    cur = conn.execute("INSERT INTO ingest_receipts (message_id) VALUES (%s) ON CONFLICT DO NOTHING"
                       " RETURNING 1 AS taken", (message_id,))
    return later(lambda: cur.fetchone() is not None)
