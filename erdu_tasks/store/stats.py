"""MTTA and MTTR per severity and per fingerprint, computed from the incidents Postgres keeps.
"Auto" (auto_resolved) counts every resolution without a person: a runbook's fix, the learned shortcut, a
source's recovery (migration 0055_counters); not only the shortcut.

MTTA: mean time from detection to a person's acknowledgement, over acknowledged incidents
(ERDU's own handling is not an acknowledgement). MTTR: mean time from detection to resolution,
over resolved incidents. Both are in seconds; None when no incident qualifies.

Without `since`, the figures come from the rollups (incident_totals, fingerprint_totals) that triggers keep
in the transaction of every change to an incident (migration 0011_history): no read of the history. With
`since`, the incidents created in that window are read through the created_at index.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg

_AGGREGATES = """
    count(*) AS incidents,
    count(*) FILTER (WHERE status NOT IN ('resolved', 'closed')) AS open,
    count(*) FILTER (WHERE resolved_at IS NOT NULL) AS resolved,
    count(*) FILTER (WHERE escalated_at IS NOT NULL) AS escalated,
    count(*) FILTER (WHERE resolved_at IS NOT NULL AND NOT coalesce(resolved_by LIKE 'person:%%', false))
        AS auto_resolved,
    count(*) FILTER (WHERE acknowledged_at IS NOT NULL) AS acknowledged,
    avg(extract(epoch FROM acknowledged_at - created_at)) AS mtta,
    avg(extract(epoch FROM resolved_at - created_at)) AS mttr
"""


@dataclass(frozen=True)
class StatsRow:
    """Counts and mean times for one severity or one fingerprint."""

    key: str
    incidents: int
    open: int
    resolved: int
    escalated: int
    auto_resolved: int
    acknowledged: int
    mtta: float | None
    mttr: float | None
    title: str | None = None
    best_runbook: str | None = None
    runbook_attempts: int = 0
    runbook_successes: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def _row(r: dict[str, Any], **extra: Any) -> StatsRow:
    return StatsRow(key=r["key"], incidents=_int(r["incidents"]), open=_int(r["open"]), resolved=_int(r["resolved"]),
                    escalated=_int(r["escalated"]), auto_resolved=_int(r["auto_resolved"]),
                    acknowledged=_int(r["acknowledged"]),
                    mtta=float(r["mtta"]) if r["mtta"] is not None else None,
                    mttr=float(r["mttr"]) if r["mttr"] is not None else None, **extra)


_ROLLUP_SUMS = """
    sum(incidents) AS incidents,
    sum(incidents) FILTER (WHERE status NOT IN ('resolved', 'closed')) AS open,
    sum(resolved) AS resolved, sum(escalated) AS escalated, sum(auto_resolved) AS auto_resolved,
    sum(acknowledged) AS acknowledged,
    sum(ack_seconds) / nullif(sum(acknowledged), 0) AS mtta,
    sum(resolve_seconds) / nullif(sum(resolved), 0) AS mttr
"""


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


def by_severity(conn: psycopg.Connection, *, since: datetime | None = None) -> list[StatsRow]:
    """One row per severity (current severity), P1 first."""
    if since is None:
        rows = conn.execute(f"SELECT severity AS key, {_ROLLUP_SUMS} FROM incident_totals GROUP BY severity"
                            " HAVING sum(incidents) > 0 ORDER BY severity").fetchall()
        return [_row(r) for r in rows]
    rows = conn.execute(
        f"SELECT severity AS key, {_AGGREGATES} FROM incidents"
        " WHERE created_at >= %(since)s GROUP BY severity ORDER BY severity",
        {"since": since},
    ).fetchall()
    return [_row(r) for r in rows]


def by_fingerprint(conn: psycopg.Connection, *, since: datetime | None = None, limit: int = 20) -> list[StatsRow]:
    """One row per fingerprint, most incidents first, with its best runbook by validated successes."""
    source = f"""(SELECT fingerprint AS key, (array_agg(title ORDER BY created_at DESC))[1] AS title, {_AGGREGATES}
              FROM incidents WHERE created_at >= %(since)s GROUP BY fingerprint)""" if since is not None else """(
              SELECT fingerprint AS key, title, incidents, open, resolved, escalated, auto_resolved, acknowledged,
                     ack_seconds / nullif(acknowledged, 0) AS mtta, resolve_seconds / nullif(resolved, 0) AS mttr
              FROM fingerprint_totals WHERE incidents > 0 ORDER BY incidents DESC, fingerprint LIMIT %(limit)s)"""
    rows = conn.execute(
        f"""
        SELECT i.key, i.title, i.incidents, i.open, i.resolved, i.escalated, i.auto_resolved, i.acknowledged,
               i.mtta, i.mttr, s.runbook, coalesce(s.attempts, 0) AS attempts, coalesce(s.successes, 0) AS successes
        FROM {source} AS i
        LEFT JOIN LATERAL (SELECT runbook, attempts, successes FROM pattern_action_stats
                           WHERE fingerprint = i.key AND attempts > 0
                           ORDER BY successes::float / attempts DESC, attempts DESC LIMIT 1) AS s ON true
        ORDER BY i.incidents DESC, i.key LIMIT %(limit)s
        """,
        {"since": since, "limit": limit},
    ).fetchall()
    return [_row(r, title=r["title"], best_runbook=r["runbook"], runbook_attempts=int(r["attempts"]),
                 runbook_successes=int(r["successes"])) for r in rows]


def overall(conn: psycopg.Connection, *, since: datetime | None = None) -> StatsRow:
    """All incidents together."""
    if since is None:
        return _row(conn.execute(f"SELECT 'all' AS key, {_ROLLUP_SUMS} FROM incident_totals").fetchone())
    r = conn.execute(
        f"SELECT 'all' AS key, {_AGGREGATES} FROM incidents WHERE created_at >= %(since)s",
        {"since": since},
    ).fetchone()
    return _row(r)


BUCKETS = ("hour", "day", "week")
"""The widths over_time groups by (Postgres date_trunc units)."""


def over_time(conn: psycopg.Connection, *, since: datetime, bucket: str = "day") -> list[StatsRow]:
    """One row per `bucket` (in UTC) of creation time since `since`, oldest first (key: the bucket's start, ISO 8601).

    The same MTTA/MTTR definitions as by_severity (a bucket's means are over its incidents that were
    acknowledged / resolved); read through the created_at index. Buckets with no incident are absent."""
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {', '.join(BUCKETS)}, not {bucket!r}")
    rows = conn.execute(
        f"SELECT date_trunc(%(bucket)s, created_at, 'UTC') AS at, {_AGGREGATES} FROM incidents"
        " WHERE created_at >= %(since)s GROUP BY 1 ORDER BY 1",
        {"bucket": bucket, "since": since},
    ).fetchall()
    return [_row({**r, "key": r["at"].isoformat()}) for r in rows]
