"""The metrics as the README documents them: unacked messages per queue, and a shipped Grafana dashboard whose
every panel asks for a series the exporter serves (scraped from a real `erdu metrics`)."""

from __future__ import annotations

import json
import threading
import re

import psycopg
import pytest
import redis
from kombu import Connection
from psycopg.rows import dict_row

from erdu_tasks.model import Severity, Status
from erdu_tasks.names import ROLES
from erdu_tasks.store import incidents as store, metrics
from tests.conftest import ROOT, RedisServer, free_port
from tests.integration.test_metrics import scrape

DASHBOARD = ROOT / "examples" / "grafana" / "erdu.json"


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("series-redis"))
    yield server
    server.stop()


def test_unacked_messages_are_counted_per_queue_and_a_foreign_entry_breaks_nothing(private_redis):
    client = redis.Redis.from_url(private_redis.url)
    with Connection(private_redis.url) as conn:
        fixer = conn.SimpleQueue("fixer")
        fixer.put({"incident": "INC-1"})
        fixer.put({"incident": "INC-2"})
        held = fixer.get(timeout=5)                    # delivered, not acked: in kombu's unacked hash
        client.hset("unacked", "bogus-tag", b"\xff not json")
        snap = metrics.Snapshot()
        metrics.read_redis(client, ROLES, snap)
        held.ack()
        fixer.close()
    assert snap.unacked == {**dict.fromkeys(ROLES, 0), "fixer": 1, "other": 1}
    assert snap.queue_depth["fixer"] == 1


def _one_incident_through_people(url: str) -> None:
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        new = store.NewIncident(fingerprint="fp-dash", template="Disk full on <*>", title="Disk full on /var",
                                description="", severity=Severity.P2, source="api", service="orders", host=None,
                                affected_services=["orders"], tags=[], labels={}, error_details={}, samples=[],
                                count=1)
        iid = store.upsert_incident(conn, new).incident_id
        for src, dst, actor, updates in (
                (Status.DETECTED, Status.ASSIGNED, "commander", {}),
                (Status.ASSIGNED, Status.ESCALATED, "escalation", {}),
                (Status.ESCALATED, Status.ACKNOWLEDGED, "person:alice", {}),
                (Status.ACKNOWLEDGED, Status.RESOLVED, "person:alice", {"resolved_by": "person:alice"})):
            assert store.transition(conn, iid, expected=[src], to=dst, actor=actor, what="test", updates=updates)
        conn.execute("INSERT INTO failed_tasks (task_id, task_name, stage, incident_id, error, worker)"
                     " VALUES ('t1', 'erdu.fix', 'fix', %s, 'boom', 'w')", (iid,))


def test_every_panel_of_the_shipped_dashboard_asks_for_a_series_the_exporter_serves(
        fresh_database_url, private_redis):
    dashboard = json.loads(DASHBOARD.read_text())
    _one_incident_through_people(fresh_database_url)
    server = metrics.make_server(fresh_database_url, private_redis.url, port=free_port(), channels=("pager",))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        served = {name for name, _ in scrape(f"http://127.0.0.1:{server.server_port}/metrics")}
    finally:
        server.shutdown()
        server.server_close()
    asked = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\berdu_[a-z_]+\b", target["expr"]))
            assert names, (panel["title"], target["expr"])
            assert names <= served, (panel["title"], sorted(names - served))
            asked |= names
    # The dashboard covers every family the exporter has (histograms through their buckets or sums).
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in served if n.startswith("erdu_")}
    covered = {re.sub(r"_(bucket|sum|count)$", "", n) for n in asked}
    assert families <= covered, sorted(families - covered)
