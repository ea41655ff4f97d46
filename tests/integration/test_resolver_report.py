"""The resolver writes the report before its close is sent (the close, its learning and the commit are one
round trip): from the incident as the close will leave it, with the pattern as its learning will leave it.
Here that report is compared with the one built from the database after the close, so a drift between what
the resolver predicts and what Postgres stores fails; and a close that does not commit leaves no report.
"""

from __future__ import annotations

import dataclasses
import json

import psycopg
import pytest
from psycopg.types.json import Jsonb

from erdu_tasks.brains import Brains, Thought
from erdu_tasks.escalation import inhibition
from erdu_tasks.model import Event, Status
from erdu_tasks.names import Stage
from erdu_tasks.roles.report import build_report, dumps_indented, render_markdown, report_paths
from erdu_tasks.store import history, incidents as store
from erdu_tasks.tasks import pipeline
from erdu_tasks.tasks.base import drive_stage
from erdu_tasks.tasks.ingest import store_events
from tests.integration.test_round_trips import BODIES, _Task, rt  # noqa: F401 (rt: the fixture)


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    monkeypatch.setattr("erdu_tasks.tasks.base.hand_on", lambda *_: None)


def _closed(rt, message_id: str, service: str = "orders") -> str:
    """One incident through ingest and every stage (the stage code, real Postgres); its id, closed."""
    incident_id = store_events(rt, [Event(source="app", service=service,
                                           message=f"connection pool exhausted on {service}")],
                               message_id).new_incidents[0]
    stage = Stage.ASSESS
    while stage is not None:
        stage = drive_stage(_Task(), rt, stage, incident_id, BODIES[stage], "test-1")
    return incident_id


def _from_the_database(rt, incident_id: str) -> dict:
    """The report built from what Postgres holds after the close: the incident and its timeline read back,
    the pattern and its runbooks as counted; the resolver's own texts from the close's line and columns."""
    json_path, _ = report_paths(rt.settings.reports_dir, incident_id)
    with rt.db.transaction() as conn:
        closed = store.get_incident(conn, incident_id, with_timeline=True)
        close = next(t for t in reversed(closed.timeline) if t.to_status == "closed")
        assert closed.status is Status.CLOSED
        resolution = {"summary": close.details["summary"], "brain": close.details["brain"],
                      "impact": json.loads(json_path.read_text())["impact"],   # said in the report only
                      "lessons_learned": closed.lessons_learned, "follow_ups": closed.follow_ups,
                      "root_cause": closed.root_cause}
        return build_report(closed, resolution, related=pipeline._related(conn, rt, closed),
                            learning=pipeline.pattern_learning(conn, rt, closed.fingerprint, rt.learning),
                            children=inhibition.children_of(conn, incident_id),
                            situation=history.same_situation(conn, closed,
                                                             window_seconds=rt.learning.situation_window_seconds))


def _assert_written_as_stored(rt, incident_id: str) -> dict:
    json_path, md_path = report_paths(rt.settings.reports_dir, incident_id)
    stored = _from_the_database(rt, incident_id)
    assert json_path.read_text() == dumps_indented(stored)
    assert md_path.read_text() == render_markdown(stored)
    return stored


def test_the_report_written_before_the_close_is_the_report_of_the_closed_incident(rt):
    first = _closed(rt, "message-1")
    report = _assert_written_as_stored(rt, first)
    assert report["learning"]["pattern"]["resolved"] == 1
    assert [p["status"] for p in report["phases"]][-1] == "resolved"

    second = _closed(rt, "message-2")   # the same fingerprint: it learned from the first
    assert _from_the_database(rt, second)["fingerprint"] == report["fingerprint"]
    report = _assert_written_as_stored(rt, second)
    assert report["learning"]["pattern"]["resolved"] == 2
    assert report["learning"]["pattern"]["mean_time_to_resolve"] is not None
    assert report["learning"]["runbooks"][0]["attempts"] == 2
    assert [r["id"] for r in report["related"]] == [first]


class _FellBack:
    """The rules' resolution, as a configured model that failed leaves it: its fallback noted on the timeline."""

    name = "llm"

    def __init__(self, rules) -> None:
        self.rules = rules

    def resolve(self, incident, ctx):
        return dataclasses.replace(self.rules.resolve(incident, ctx), brain="llm", model="fake-1",
                                   fallback="timed out after 2 s: ünïcode keys", seconds=2.00049)


def test_a_brain_s_fallback_line_is_in_the_report_as_stored(rt):
    brains = rt.brains
    rt.brains = Brains(brains.commander, brains.diagnostician, _FellBack(brains.resolver))
    incident_id = _closed(rt, "message-1")
    report = _assert_written_as_stored(rt, incident_id)
    note, close = report["timeline"][-2:]
    assert note["what"].startswith("resolver: LLM brain not used (timed out") and close["to_status"] == "closed"
    assert list(note["details"]["brain"]) == ["name", "model", "seconds", "fallback"]   # jsonb's key order


def test_a_close_that_does_not_commit_leaves_no_report(rt):
    incident_id = store_events(rt, [Event(source="app", service="orders",
                                          message="connection pool exhausted on orders")], None).new_incidents[0]
    for stage in (Stage.ASSESS, Stage.DIAGNOSE, Stage.FIX):
        drive_stage(_Task(), rt, stage, incident_id, BODIES[stage], "test-1")
    json_path, md_path = report_paths(rt.settings.reports_dir, incident_id)

    def close_then_fail(conn, rt, incident, worker):
        pipeline._resolve(conn, rt, incident, worker)
        assert md_path.is_file() and json_path.is_file()   # written before the commit
        conn.execute("UPDATE no_such_table SET x = 1")   # fails with the close, at the commit

    with pytest.raises(psycopg.errors.UndefinedTable):
        drive_stage(_Task(), rt, Stage.RESOLVE, incident_id, close_then_fail, "test-1")
    assert not md_path.exists() and not json_path.exists()
    with rt.db.transaction() as conn:
        assert store.get_incident(conn, incident_id).status is Status.RESOLVED
        assert pipeline.current_report(conn, rt, incident_id) is None

    drive_stage(_Task(), rt, Stage.RESOLVE, incident_id, BODIES[Stage.RESOLVE], "test-1")   # the retry
    _assert_written_as_stored(rt, incident_id)


def test_a_report_file_left_by_a_close_that_never_committed_is_not_the_final_report(rt):
    incident_id = store_events(rt, [Event(source="app", service="orders",
                                          message="connection pool exhausted on orders")], None).new_incidents[0]
    json_path, md_path = report_paths(rt.settings.reports_dir, incident_id)
    md_path.parent.mkdir(parents=True)
    json_path.write_text(json.dumps({"id": incident_id}))
    md_path.write_text("# a worker was lost before its commit\n")
    with rt.db.transaction() as conn:
        assert pipeline.current_report(conn, rt, incident_id) is None


VALUES = [
    {"summary": "s", "report_json": "r", "brain": {"name": "llm", "model": "m", "fallback": "f", "seconds": 1.5}},
    {"zz": 1, "a": 2, "é": 3, "ab": 4, "b": {"yy": [1, {"k2": 0, "k": 1}], "x": None}, "": True},
    {"floats": [0.1, 12.345, 1e20, 1e23, 1.2345e16, 1.5e-07, -0.0, 3.0, 2.00049, -2.5e+300, 1e16]},
    {"big": 10**30, "neg": -7, "tuple": (1, 2), "nested": [[], {}], "text": "line\nbreak \u2028 \"quoted\" \\"},
    [{"b": 1, "a": 2}, "x"],
    "just text",
    1e22,
]


@pytest.mark.parametrize("value", VALUES)
def test_as_jsonb_is_what_a_jsonb_column_reads_back(rt, value):
    with rt.db.transaction() as conn:
        row = conn.execute("SELECT %s::jsonb AS v", (Jsonb(value),)).fetchone()
    assert json.dumps(row["v"]) == json.dumps(store.as_jsonb(value))
