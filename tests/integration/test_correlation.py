"""Correlation that does not depend on arrival order, through the commander's and resolver's stage bodies
against real Postgres (no workers): a P1 and the open incidents of the services that depend on it are one
parent with its children whichever came first, and a probe's and a log's incidents of one service opened
close together are one situation on the report."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from erdu_tasks.ingest.accept import accept
from erdu_tasks.model import Event
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings
from erdu_tasks.store import incidents as store
from erdu_tasks.tasks import pipeline

PARENT = Event(source="log", message="ERROR orders-db: database connection failed on primary", service="orders-db")
CHILD = Event(source="log", message="ERROR orders: worker pool exhausted", service="orders")
UNRELATED = Event(source="log", message="ERROR billing: worker pool exhausted", service="billing")


@pytest.fixture()
def rt(fresh_database_url, tmp_path: Path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(textwrap.dedent("""
        services:
          - {name: orders-db}
          - {name: orders, depends_on: [orders-db]}
          - {name: shop, depends_on: [orders]}
          - {name: billing}
    """))
    runtime = Runtime(load_settings(database_url=fresh_database_url, catalog_file=catalog,
                                    reports_dir=tmp_path / "reports"))
    yield runtime
    runtime.db.close()


def open_incident(rt: Runtime, event: Event) -> str:
    ids = accept(rt.db, [event], rt).new_incidents
    assert len(ids) == 1
    return ids[0]


def assess(rt: Runtime, incident_id: str) -> None:
    with rt.db.transaction() as conn:
        pipeline._assess(conn, rt, store.get_incident(conn, incident_id, for_update=True), "test")


def get(rt: Runtime, incident_id: str):
    with rt.db.transaction() as conn:
        return store.get_incident(conn, incident_id, with_timeline=True)


def test_children_that_came_first_are_linked_when_the_p1_is_assessed(rt):
    child = open_incident(rt, CHILD)
    grandchild = open_incident(rt, Event(source="log", message="ERROR shop: checkout failing", service="shop"))
    other = open_incident(rt, UNRELATED)
    for incident_id in (child, grandchild, other):
        assess(rt, incident_id)
    assert get(rt, child).parent_id is None          # nothing to correlate with yet
    parent = open_incident(rt, PARENT)
    assert get(rt, parent).severity.value == "P1"
    assess(rt, parent)
    assert get(rt, child).parent_id == parent
    assert get(rt, grandchild).parent_id == parent   # transitive dependant
    assert get(rt, other).parent_id is None
    assert any(f"child {child} linked" in t.what for t in get(rt, parent).timeline)
    assert any(f"linked to parent {parent}" in t.what for t in get(rt, child).timeline)
    assess(rt, parent)                               # a redelivered assessment links nothing twice
    assert sum(f"child {child} linked" in t.what for t in get(rt, parent).timeline) == 1


def test_children_that_come_after_the_p1_are_linked_when_they_are_assessed(rt):
    parent = open_incident(rt, PARENT)
    assess(rt, parent)
    child = open_incident(rt, CHILD)
    other = open_incident(rt, UNRELATED)
    assess(rt, child)
    assess(rt, other)
    assert get(rt, child).parent_id == parent
    assert get(rt, other).parent_id is None


def test_a_probe_and_a_log_incident_of_one_service_are_one_situation_on_the_report(rt, tmp_path):
    from_log = open_incident(rt, Event(source="log", message="ERROR billing: upstream reset", service="billing"))
    from_probe = open_incident(rt, Event(source="probe", message="HTTP probe billing-health is failing (5xx)",
                                         service="billing", severity="P3"))
    elsewhere = open_incident(rt, Event(source="probe", message="HTTP probe shop-health is failing (5xx)",
                                        service="shop", severity="P3"))
    with rt.db.transaction() as conn:
        conn.execute("UPDATE incidents SET status = 'resolved', resolved_at = now() WHERE id = %s", (from_log,))
        pipeline._resolve(conn, rt, store.get_incident(conn, from_log, for_update=True), "test")
    report = (tmp_path / "reports" / f"{from_log}.md").read_text()
    assert "## One situation" in report
    section = report.split("## One situation", 1)[1].split("##", 1)[0]
    assert from_probe in section and "(probe, P3" in section
    assert elsewhere not in report
