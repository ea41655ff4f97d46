"""The rollups behind /metrics and `erdu stats` (kept by triggers in each change's transaction) say exactly
what the queries over the whole history said: after ingest, every stage's status change, a severity change,
an acknowledgement, a person's resolve, a delete, a rebuild and a TRUNCATE."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import psycopg
import pytest
from psycopg.rows import dict_row

from erdu_tasks.model import Severity, Status
from erdu_tasks.store import incidents as store, metrics, stats

# ---- the figures as they were computed before the rollups: over every incident and timeline row ----------

_DURATIONS = """
    SELECT label, width_bucket(secs, %(bounds)s::float8[]) AS bucket, count(*) AS n, sum(secs) AS s
    FROM ({inner}) AS d GROUP BY label, bucket
"""
_AGGREGATES = """
    count(*) AS incidents, count(*) FILTER (WHERE status NOT IN ('resolved', 'closed')) AS open,
    count(*) FILTER (WHERE resolved_at IS NOT NULL) AS resolved,
    count(*) FILTER (WHERE escalated_at IS NOT NULL) AS escalated,
    count(*) FILTER (WHERE resolved_at IS NOT NULL AND NOT coalesce(resolved_by LIKE 'person:%%', false))
        AS auto_resolved,
    count(*) FILTER (WHERE acknowledged_at IS NOT NULL) AS acknowledged,
    avg(extract(epoch FROM acknowledged_at - created_at)) AS mtta,
    avg(extract(epoch FROM resolved_at - created_at)) AS mttr
"""


def scanned(conn: psycopg.Connection) -> dict:
    q = conn.execute
    out: dict = {"by_status": sorted((r["severity"], r["source"], r["status"], r["n"]) for r in q(
        "SELECT severity, source, status, count(*) AS n FROM incidents GROUP BY 1, 2, 3"))}
    response = [float(b) for b in metrics.RESPONSE_BUCKETS]
    for name, column in (("mtta", "acknowledged_at"), ("mttr", "resolved_at")):
        out[name] = _hist(q(_DURATIONS.format(inner=(
            f"SELECT severity AS label, extract(epoch FROM {column} - created_at)::float8 AS secs"
            f" FROM incidents WHERE {column} IS NOT NULL")), {"bounds": response}).fetchall())
    out["stage"] = _hist(q(_DURATIONS.format(inner=(
        "SELECT actor AS label, extract(epoch FROM at - prev)::float8 AS secs FROM ("
        "  SELECT t.actor, t.at, coalesce(lag(t.at) OVER w, i.created_at) AS prev"
        "  FROM incident_timeline t JOIN incidents i ON i.id = t.incident_id"
        "  WHERE t.to_status IS NOT NULL WINDOW w AS (PARTITION BY t.incident_id ORDER BY t.id)"
        ") AS x WHERE actor = ANY(%(roles)s)")), {"bounds": [float(b) for b in metrics.STAGE_BUCKETS],
                                                   "roles": list(metrics.STAGE_ROLES)}).fetchall())
    out["severity"] = [dict(r) for r in q(f"SELECT severity AS key, {_AGGREGATES} FROM incidents"
                                          " GROUP BY severity ORDER BY severity")]
    out["overall"] = dict(q(f"SELECT 'all' AS key, {_AGGREGATES} FROM incidents").fetchone())
    out["fingerprint"] = [dict(r) for r in q(
        f"SELECT fingerprint AS key, (array_agg(title ORDER BY created_at DESC))[1] AS title, {_AGGREGATES}"
        " FROM incidents GROUP BY fingerprint ORDER BY incidents DESC, key LIMIT 20")]
    return out


def _hist(rows) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r["label"], {})[int(r["bucket"])] = (int(r["n"]), float(r["s"]))
    return out


def rolled_up(conn: psycopg.Connection) -> dict:
    snap = metrics.Snapshot()
    metrics.read_postgres(conn, snap)

    def hist(data: dict[str, metrics.Histogram]) -> dict:
        return {label: {k: n for k, n in enumerate(h.counts) if n} for label, h in data.items()}

    def row(r: stats.StatsRow) -> dict:
        return {k: v for k, v in r.as_dict().items() if k in {"key", "title", "incidents", "open", "resolved",
                                                            "escalated", "auto_resolved", "acknowledged",
                                                            "mtta", "mttr"}}

    return {"by_status": sorted(snap.by_status),
            "mtta": hist(snap.mtta), "mttr": hist(snap.mttr), "stage": hist(snap.stage),
            "sums": {k: {label: h.total for label, h in getattr(snap, k).items()} for k in ("mtta", "mttr", "stage")},
            "severity": [row(r) for r in stats.by_severity(conn)], "overall": row(stats.overall(conn)),
            "fingerprint": [{**row(r), "title": r.title} for r in stats.by_fingerprint(conn)]}


def assert_same(conn: psycopg.Connection) -> None:
    want, got = scanned(conn), rolled_up(conn)
    assert got["by_status"] == want["by_status"]
    for name in ("mtta", "mttr", "stage"):
        assert got[name] == {label: {k: n for k, (n, _) in b.items()} for label, b in want[name].items()}, name
        assert got["sums"][name] == pytest.approx(
            {label: sum(s for _, s in b.values()) for label, b in want[name].items()}), name
    for key in ("severity", "fingerprint"):
        assert len(got[key]) == len(want[key]), key
        for g, w in zip(got[key], want[key]):
            assert _plain(g) == pytest.approx(_plain(w)), key
    assert _plain(got["overall"]) == pytest.approx(_plain(want["overall"]))


def _plain(row: dict) -> dict:
    return {k: (float(v) if v is not None and k not in ("key", "title") else v) for k, v in row.items()
            if not (k == "title" and v is None)}


@pytest.fixture()
def conn(fresh_database_url) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as c:
        yield c


def new(fp: str, severity: str = "P3", source: str = "log", title: str | None = None) -> store.NewIncident:
    return store.NewIncident(fingerprint=fp, template=f"template {fp}", title=title or f"title {fp}", description="",
                             severity=Severity(severity), source=source, service="orders", host=None,
                             affected_services=["orders"], tags=[], labels={}, error_details={}, samples=[], count=1)


def step(conn, incident_id: str, src: Status, dst: Status, actor: str, **updates) -> None:
    assert store.transition(conn, incident_id, expected=[src], to=dst, actor=actor, what="test",
                            updates=updates) == src


def full_path(conn, incident_id: str, *, by: str = "runbook:restart", auto: bool = False) -> None:
    step(conn, incident_id, Status.DETECTED, Status.ASSIGNED, "commander", auto_resolved=auto)
    step(conn, incident_id, Status.ASSIGNED, Status.INVESTIGATING, "diagnostician")
    step(conn, incident_id, Status.INVESTIGATING, Status.FIXING, "fixer")
    step(conn, incident_id, Status.FIXING, Status.RESOLVED, "fixer", resolved_by=by)
    step(conn, incident_id, Status.RESOLVED, Status.CLOSED, "resolver")


def test_the_rollups_follow_every_change_and_equal_the_full_scans(conn):
    assert_same(conn)                                                   # nothing yet: empty on both sides
    ids = {}
    for fp, sev, source in (("a", "P3", "log"), ("b", "P2", "probe"), ("c", "P1", "api"), ("d", "P4", "log")):
        ids[fp] = store.upsert_incident(conn, new(fp, sev, source)).incident_id
    assert store.upsert_incident(conn, new("a")).created is False     # an occurrence: no rollup change
    assert_same(conn)

    full_path(conn, ids["a"], auto=True)
    store.update_fields(conn, ids["b"], {"severity": Severity.P1})      # the commander raises a severity
    step(conn, ids["b"], Status.DETECTED, Status.ESCALATED, "escalation")
    step(conn, ids["b"], Status.ESCALATED, Status.ACKNOWLEDGED, "person:alice")
    step(conn, ids["b"], Status.ACKNOWLEDGED, Status.RESOLVED, "person:alice", resolved_by="person:alice")
    step(conn, ids["b"], Status.RESOLVED, Status.CLOSED, "resolver")
    assert store.raise_severity(conn, ids["c"], Severity.P1) is None    # not worse: nothing
    step(conn, ids["c"], Status.DETECTED, Status.ASSIGNED, "commander", severity=Severity.P2)
    assert_same(conn)

    again = store.upsert_incident(conn, new("a", title="title a, later")).incident_id   # a's fingerprint recurs
    full_path(conn, again)
    conn.execute("DELETE FROM incidents WHERE id = %s", (ids["d"],))
    assert_same(conn)
    conn.execute("DELETE FROM incidents WHERE id = %s", (again,))     # the latest of a fingerprint goes
    assert_same(conn)

    conn.execute("SELECT erdu_rollups_rebuild()")                       # what a migration or a bulk load runs
    assert_same(conn)
    conn.execute("TRUNCATE incidents CASCADE")
    assert_same(conn)
    assert stats.overall(conn).incidents == 0


def counters(conn) -> dict:
    snap = metrics.Snapshot()
    metrics.read_postgres(conn, snap)
    return {"opened": sorted(snap.opened), "closed": sorted(snap.closed), "resolved_by": snap.resolved_by}


def test_the_counters_only_grow_and_keep_the_severity_an_incident_was_opened_with(conn):
    a = store.upsert_incident(conn, new("a", "P3", "log")).incident_id
    b = store.upsert_incident(conn, new("b", "P2", "probe")).incident_id
    store.upsert_incident(conn, new("a", "P3", "log"))                 # an occurrence opens nothing
    step(conn, a, Status.DETECTED, Status.ASSIGNED, "commander", severity=Severity.P1)   # raised after opening
    full = {"opened": [("P2", "probe", 1), ("P3", "log", 1)], "closed": [], "resolved_by": {"automation": 0,
                                                                                          "person": 0}}
    assert counters(conn) == full
    step(conn, a, Status.ASSIGNED, Status.INVESTIGATING, "diagnostician")
    step(conn, a, Status.INVESTIGATING, Status.FIXING, "fixer")
    step(conn, a, Status.FIXING, Status.RESOLVED, "fixer", resolved_by="runbook:restart")   # not the shortcut
    step(conn, a, Status.RESOLVED, Status.CLOSED, "resolver")
    step(conn, b, Status.DETECTED, Status.ESCALATED, "escalation")
    step(conn, b, Status.ESCALATED, Status.RESOLVED, "person:alice", resolved_by="person:alice")
    after = {"opened": [("P2", "probe", 1), ("P3", "log", 1)], "closed": [("P3", "log", 1)],
             "resolved_by": {"automation": 1, "person": 1}}
    assert counters(conn) == after
    assert stats.overall(conn).auto_resolved == 1                       # a runbook's fix is automatic too
    assert stats.overall(conn, since=datetime(2000, 1, 1, tzinfo=timezone.utc)).auto_resolved == 1
    conn.execute("DELETE FROM incidents WHERE id = %s", (a,))
    conn.execute("TRUNCATE incidents CASCADE")
    assert counters(conn) == after                                      # gone from the table, still counted


def test_the_bucket_bounds_of_the_database_are_those_of_the_metrics(conn):
    assert metrics.bucket_bounds(conn) == (tuple(map(float, metrics.RESPONSE_BUCKETS)),
                                           tuple(map(float, metrics.STAGE_BUCKETS)))
    roles = conn.execute("SELECT erdu_stage_roles() AS r").fetchone()["r"]
    assert tuple(roles) == metrics.STAGE_ROLES
