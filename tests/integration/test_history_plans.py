"""At a realistic history size each per-incident query reads its index, and a scrape or `erdu stats` reads
no history at all: checked on the plans (EXPLAIN, FORMAT JSON) of the very statements the code runs,
not on timings. One database per module, loaded with 20,000 closed incidents (two years) and 400 open ones."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from bench import history_data
from erdu_tasks.catalog import Catalog, Service
from erdu_tasks.escalation import inhibition
from erdu_tasks.fixer import engine
from erdu_tasks.ingest import accept
from erdu_tasks.store import history, incidents as store, metrics, stats
from tests.conftest import create_database, drop_database_later

# One worker runs the module: each worker that ran one of its tests loaded its own copy (about 5 s each).
pytestmark = pytest.mark.xdist_group("history-plans")

CLOSED, OPEN = 20_000, 400
HISTORY = {"incidents", "incident_timeline"}


class Explaining:
    """A connection that records the plan of every statement before running it."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.plans: list[tuple[str, dict[str, Any]]] = []

    def execute(self, query: str, params: Any = None) -> Any:
        if query.lstrip().split(None, 1)[0].upper() in {"SELECT", "WITH", "UPDATE", "INSERT", "DELETE"}:
            row = self.conn.execute("EXPLAIN (FORMAT JSON) " + query, params).fetchone()
            self.plans.append((query, row["QUERY PLAN"][0]["Plan"]))
        return self.conn.execute(query, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)

    def nodes(self) -> list[dict[str, Any]]:
        """Every plan node of every statement recorded."""
        out: list[dict[str, Any]] = []

        def walk(node: dict[str, Any]) -> None:
            out.append(node)
            for child in node.get("Plans", []):
                walk(child)

        for _, plan in self.plans:
            walk(plan)
        return out

    def seq_scans(self) -> set[str]:
        return {n["Relation Name"] for n in self.nodes() if n["Node Type"] == "Seq Scan"}

    def relations(self) -> set[str]:
        return {n["Relation Name"] for n in self.nodes() if "Relation Name" in n}

    def indexes(self) -> set[str]:
        return {n["Index Name"] for n in self.nodes() if "Index Name" in n}


@pytest.fixture(scope="module")
def loaded() -> Iterator[str]:
    url = create_database()
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            history_data.load(conn, closed=CLOSED, open_=OPEN, timeline=False)
    yield url
    drop_database_later(url)


@pytest.fixture()
def conn(loaded) -> Iterator[Explaining]:
    """A transaction on the loaded database, rolled back afterwards (a test may write)."""
    with psycopg.connect(loaded, row_factory=dict_row) as c:
        yield Explaining(c)
        c.rollback()


def latest(conn: Explaining, where: str) -> Any:
    row = conn.conn.execute(f"SELECT id FROM incidents WHERE {where} ORDER BY created_at DESC LIMIT 1").fetchone()
    return store.get_incident(conn.conn, row["id"])


def test_related_incidents_walk_the_patterns_trigram_indexes_then_each_pattern_s_latest_incidents(conn):
    for incident in (latest(conn, "status = 'closed'"), latest(conn, "status <> 'closed'")):
        found = history.related_incidents(conn, incident, lookback_days=90)
        assert found and all(r["score"] >= 0.3 for r in found)
        assert any(not r["same_fingerprint"] for r in found)      # similar patterns, not only its own
    assert {"incident_patterns_template_knn", "incident_patterns_title_knn", "incidents_fingerprint"} <= conn.indexes()
    assert not conn.seq_scans() & (HISTORY | {"incident_patterns"})
    fingerprint_scans = [n for n in conn.nodes() if n.get("Index Name") == "incidents_fingerprint"]
    assert fingerprint_scans and all("created_at" in n.get("Index Cond", "") for n in fingerprint_scans)


def test_incidents_carry_no_trigram_index_and_new_incidents_keep_their_pattern_current(conn):
    trigram = conn.conn.execute(
        "SELECT indexrelid::regclass::text AS name FROM pg_index JOIN pg_opclass o ON o.oid = ANY(indclass)"
        " WHERE indrelid = 'incidents'::regclass AND o.opcname LIKE '%%trgm%%'").fetchall()
    assert trigram == []
    assert conn.conn.execute("SELECT count(*) AS n FROM incident_patterns").fetchone()["n"] == \
        conn.conn.execute("SELECT count(DISTINCT fingerprint) AS n FROM incidents").fetchone()["n"]
    old = latest(conn, "status = 'closed'")
    conn.conn.execute(
        "INSERT INTO incidents (id, fingerprint, template, title, severity, status, source)"
        " VALUES ('inc-pattern-test', %s, 'Cache <*> changed shape', 'Cache 7 changed shape', 'P3', 'detected', 'log')",
        (old.fingerprint,))
    row = conn.conn.execute("SELECT * FROM incident_patterns WHERE fingerprint = %s", (old.fingerprint,)).fetchone()
    assert (row["template"], row["title"]) == ("Cache <*> changed shape", "Cache 7 changed shape")


def test_related_incidents_found_at_diagnosis_are_reread_by_primary_key(conn):
    incident = latest(conn, "status = 'closed'")
    found = history.related_incidents(conn.conn, incident)
    again = history.refresh_related(conn, found)
    assert [r["id"] for r in again] == [r["id"] for r in found]
    assert conn.indexes() == {"incidents_pkey"} and not conn.seq_scans()


def test_open_incidents_are_counted_from_the_partial_index(conn):
    assert store.count_open(conn) == OPEN
    assert conn.indexes() & {"incidents_open_by_severity", "incidents_one_open_per_fingerprint"}
    assert not conn.seq_scans() & HISTORY


def test_inhibition_reads_only_open_p1s_of_what_the_incident_depends_on(conn):
    catalog = Catalog([Service(name="orders-0", depends_on=["billing-0", "search-0"]),
                       Service(name="billing-0", depends_on=["auth-0"])])
    child = latest(conn, "status <> 'closed' AND service = 'orders-0'")
    found = inhibition.candidates(conn, inhibition.DEFAULT_RULES, child=child, dependencies_of=catalog.dependencies)
    assert found and {i.service for i in found} <= {"billing-0", "search-0", "auth-0"}
    assert all(i.severity.value == "P1" and i.is_open and i.parent_id is None for i in found)
    assert "incidents_open_by_severity" in conn.indexes() and not conn.seq_scans() & HISTORY
    (query, _), = conn.plans
    assert "SELECT *" not in query

    conn.plans.clear()
    lonely = Catalog([Service(name="orders-0")])
    assert inhibition.candidates(conn, inhibition.DEFAULT_RULES, child=child,
                                 dependencies_of=lonely.dependencies) == []
    assert conn.plans == []                     # no dependencies: nothing read at all


def test_flapping_looks_up_the_latest_resolved_incident_of_the_fingerprint_by_index(conn):
    old = latest(conn, "status = 'closed'")
    conn.conn.execute("UPDATE incidents SET closed_at = now(), resolved_at = now() WHERE id = %s", (old.id,))
    new = store.upsert_incident(conn.conn, store.NewIncident(
        fingerprint=old.fingerprint, template=old.template, title=old.title, description="", severity=old.severity,
        source="test", service=old.service, host=None, affected_services=[], tags=[], labels={},
        error_details={}, samples=[], count=1))
    assert accept._link_flapping(conn, new.incident_id, old.fingerprint, 3600) == old.id
    assert "incidents_fingerprint_ended" in conn.indexes() and not conn.seq_scans() & HISTORY


def test_the_runbook_rate_limit_counts_in_its_index_by_the_incident_with_and_without_a_service(conn):
    from datetime import datetime, timezone

    class Rb:
        restarts = True

        def __init__(self, name):
            self.name = name
            self.limits = type("L", (), {"per_seconds": 3600 * 24 * 365 * 3})()

    now = datetime.now(timezone.utc)
    incident = latest(conn, "service = 'orders-3'")
    listed = [r["started_at"] for r in conn.conn.execute(
        "SELECT started_at FROM runbook_runs WHERE runbook = 'restart-3' AND service = 'orders-3'"
        " AND incident_id <> %s", (incident.id,)).fetchall()]
    assert listed
    own, restarts = engine.run_counts_later(conn, [Rb("restart-3"), Rb("restart-4")], [Rb("restart-3")],
                                            incident.id, now=now)()
    assert own["restart-3"] == restarts["restart-3"] == (len(listed), max(listed))
    assert own["restart-4"] == (0, None)                     # its own runs: none on this service
    assert restarts["restart-4"] == restarts["restart-3"]    # the service's restarts, by any restart runbook
    conn.conn.execute("UPDATE incidents SET service = NULL WHERE id = %s", (incident.id,))
    conn.conn.execute("UPDATE runbook_runs SET service = NULL WHERE incident_id IN"
                      " (SELECT incident_id FROM runbook_runs WHERE runbook = 'restart-3' AND service = 'orders-3'"
                      " ORDER BY started_at DESC LIMIT 2)")
    conn.plans.clear()
    own, _ = engine.run_counts_later(conn, [Rb("restart-3")], [Rb("restart-3")], incident.id, now=now)()
    assert own["restart-3"].count == 2   # a service-less incident counts the service-less runs
    assert conn.indexes() == {"runbook_runs_recent", "incidents_pkey"} and not conn.seq_scans()


def test_incident_pages_by_cursor_read_the_created_index_from_the_cursor_on(conn):
    first = store.list_incidents(conn, limit=50)
    page = first
    for _ in range(20):
        page = store.list_incidents(conn.conn, limit=50, after=store.encode_cursor(page[-1]))
    deep = store.list_incidents(conn, limit=50, after=store.encode_cursor(page[-1]))
    assert len(deep) == 50 and deep[0].created_at <= page[-1].created_at
    assert conn.indexes() == {"incidents_created_id"}
    assert not conn.seq_scans() and not any(n["Node Type"] == "Sort" for n in conn.nodes())


def test_a_scrape_and_stats_read_the_rollups_not_the_history(conn):
    snap = metrics.Snapshot()
    metrics.read_postgres(conn, snap)
    assert sum(n for _, _, n in snap.opened) == CLOSED + OPEN
    assert sum(sum(h.counts) for h in snap.mttr.values()) == CLOSED
    stats.overall(conn)
    stats.by_severity(conn)
    top = stats.by_fingerprint(conn)
    assert len(top) == 20 and top[0].incidents >= top[-1].incidents
    assert not conn.relations() & HISTORY, conn.relations()
    assert not conn.seq_scans() & {"fingerprint_totals"}


def test_the_escalated_count_of_a_pattern_is_read_from_its_rollup_row(conn):
    incident = latest(conn, "status = 'closed' AND escalated_at IS NOT NULL")
    conn.conn.execute("INSERT INTO error_patterns (fingerprint) VALUES (%s) ON CONFLICT DO NOTHING",
                      (incident.fingerprint,))
    history.record_escalated(conn, incident.fingerprint)
    want = conn.conn.execute("SELECT count(*) AS n FROM incidents WHERE fingerprint = %s AND escalated_at IS NOT NULL",
                             (incident.fingerprint,)).fetchone()["n"]
    got = conn.conn.execute("SELECT escalated FROM error_patterns WHERE fingerprint = %s",
                            (incident.fingerprint,)).fetchone()["escalated"]
    assert got == want > 0
    assert not conn.relations() & HISTORY
