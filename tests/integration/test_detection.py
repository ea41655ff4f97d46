"""Detection through the real ingest path: ignore rules, bad rule files, flapping, numbers masked."""

from __future__ import annotations

import textwrap

import pytest

from tests.conftest import incident_rows, wait_for


def test_an_event_matching_an_ignore_rule_never_reaches_postgres(stack_factory, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(textwrap.dedent("""
        rules:
          - name: drop-noisy-cron
            match: {message: "cron job .* skipped"}
            ignore: true
    """))
    stack = stack_factory({"ERDU_RULES_FILE": str(rules)})
    stack.start("ingest")
    stack.send_event([{"message": "ERROR cron job 42 skipped", "service": "cron"},
                      {"message": "DummyErrorForAudit raised", "service": "audit"}])
    stack.send_event({"message": "Timeout error on checkout", "service": "shop"})
    rows = wait_for(lambda: incident_rows(stack.database_url), 30, what="the real incident")
    assert [r["title"] for r in rows if "cron" in r["title"].lower() or "Dummy" in r["title"]] == []
    assert len(rows) == 1 and rows[0]["service"] == "shop"
    patterns = incident_rows(stack.database_url, "SELECT count(*) AS n FROM error_patterns")
    assert patterns[0]["n"] == 1


def test_a_bad_rule_file_stops_the_worker_at_start_up_naming_the_file(stack_factory, tmp_path):
    rules = tmp_path / "broken.yaml"
    rules.write_text("rules:\n  - name: bad\n    match: {message: \"(unclosed\"}\n    severity: P1\n")
    # Wide enough that the console never wraps the file's path (pytest-xdist's temporary paths are longer).
    stack = stack_factory({"ERDU_RULES_FILE": str(rules), "COLUMNS": "400"})
    done = stack.erdu("worker", "ingest", timeout=60)
    assert done.returncode != 0
    assert "broken.yaml" in done.stderr and "bad" in done.stderr
    assert "Traceback" not in done.stderr


def test_numbers_in_a_message_do_not_split_an_incident(stack_factory):
    stack = stack_factory()
    stack.start("ingest")
    stack.send_event({"message": "Timeout after 3001ms for request 8812", "service": "api"})
    stack.send_event({"message": "Timeout after 17ms for request 9", "service": "api"})
    stack.send_event({"message": "Timeout after 17ms for request 9", "service": "billing"})
    wait_for(lambda: sum(r["occurrences"] for r in incident_rows(stack.database_url)) == 3, 30, what="3 events")
    rows = incident_rows(stack.database_url, "SELECT service, occurrences FROM incidents ORDER BY service")
    assert [(r["service"], r["occurrences"]) for r in rows] == [("api", 2), ("billing", 1)]


@pytest.mark.slow(15)
def test_a_recurrence_after_resolution_links_to_the_previous_incident(stack_factory):
    stack = stack_factory()
    stack.start_all(("ingest", "resolver"))
    stack.send_event({"message": "Replica lag 30s on replica 2", "service": "db"})
    first = wait_for(lambda: incident_rows(stack.database_url), 30, what="first incident")[0]
    done = stack.erdu("incidents", "resolve", first["id"], "--note", "replica caught up")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: incident_rows(stack.database_url, "SELECT status FROM incidents WHERE id = %s",
                                   (first["id"],))[0]["status"] == "closed", 30, what="closed by resolver")
    stack.send_event({"message": "Replica lag 45s on replica 2", "service": "db"})
    second = wait_for(lambda: [r for r in incident_rows(stack.database_url) if r["id"] != first["id"]], 30,
                      what="second incident")[0]
    assert second["fingerprint"] == first["fingerprint"]
    assert second["reopened_from"] == first["id"]
    assert "flapping" in second["tags"]
