"""The diagnostician's evidence against real Postgres: lines of other incidents are not evidence, the window
is bounded by the first occurrence's time, and "cause not yet known" beats a guess (no workers)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg

from erdu_tasks.ingest.accept import accept
from erdu_tasks.model import Event
from erdu_tasks.roles import diagnostician
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings
from erdu_tasks.store import incidents as store
from erdu_tasks.tasks import pipeline

T0 = datetime(2026, 12, 1, 23, 0, 0, tzinfo=timezone.utc)
DISK = "api[812]: ERROR write failed: No space left on device"
EVENT = "api[812]: ERROR checkout failed for order 17"


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def diagnose(rt: Runtime, incident_id: str) -> diagnostician.Diagnosis:
    with rt.db.transaction() as conn:
        incident = store.get_incident(conn, incident_id)
        return diagnostician.diagnose(incident, pipeline.diagnostician_context(conn, rt, incident))


def test_a_line_of_an_earlier_incident_of_another_pattern_is_not_the_cause(fresh_database_url, tmp_path):
    log = tmp_path / "api.log"
    log.write_text("\n".join([f"{at(-3)} {DISK}", f"{at(-1)} api[812]: INFO request served", f"{at(0)} {EVENT}",
                              f"{at(1)} api[812]: INFO retrying"]) + "\n")
    rt = Runtime(load_settings(database_url=fresh_database_url,
                               learning={"evidence": {"log_roots": [str(tmp_path)]}}))
    labels = {"path": str(log)}
    try:
        # The disk-full line was its own incident, already closed; the checkout failure is new.
        disk = accept(rt.db, [Event(source="log", message=f"{at(-3)} {DISK}", service="api", labels=labels,
                                    occurred_at=T0 - timedelta(seconds=3))], rt).new_incidents[0]
        with psycopg.connect(fresh_database_url) as conn:
            conn.execute("UPDATE incidents SET status = 'closed', closed_at = now() WHERE id = %s", (disk,))
        current = accept(rt.db, [Event(source="log", message=f"{at(0)} {EVENT}", service="api", labels=labels,
                                       occurred_at=T0)], rt).new_incidents[0]
        result = diagnose(rt, current)
        assert not result.established and "cause not yet known" in result.root_cause, result.root_cause
        assert [line["text"] for line in result.log["lines"]] == [
            f"{at(-1)} api[812]: INFO request served", f"{at(0)} {EVENT}", f"{at(1)} api[812]: INFO retrying"]
        assert any("belong to other incidents" in e and disk in e for e in result.evidence), result.evidence
        assert "upstream API" not in result.root_cause   # the `api` tag came from the header: now none

        # The same line with no incident of its own is evidence: then the disk is the likely cause.
        with psycopg.connect(fresh_database_url) as conn:
            conn.execute("DELETE FROM incidents WHERE id = %s", (disk,))
        assert diagnose(rt, current).root_cause == "the disk is full"
    finally:
        rt.db.close()
