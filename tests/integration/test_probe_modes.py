"""Probe incidents by failure mode against a real HTTP server and real Postgres: a refused connection and
a 500 are two patterns, so a restart proven for "refused" is not applied to "500" (no workers)."""

from __future__ import annotations

import textwrap
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from erdu_tasks.monitors import http_probe
from erdu_tasks.monitors.config import load_monitors
from erdu_tasks.roles import commander
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings
from erdu_tasks.store import history, incidents as store
from erdu_tasks.tasks import pipeline
from tests.conftest import free_port


class Server:
    """Answers 500 until closed; after close() the port refuses connections."""

    def __init__(self, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def rt(fresh_database_url, tmp_path):
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "rb.yaml").write_text(textwrap.dedent("""
        runbooks:
          - name: restart-orders
            match: {services: [orders]}
            actions: [{action: restart, params: {argv: ["true"]}}]
            validation: {check: from_incident}
    """))
    runtime = Runtime(load_settings(database_url=fresh_database_url, runbooks_dir=tmp_path / "runbooks"))
    yield runtime
    runtime.db.close()


def prober(rt, port: int):
    """One run of the orders probe against the port, giving the incident its condition is on."""
    cfg = load_monitors({"probes": {"checks": [{"name": "orders-health", "url": f"http://127.0.0.1:{port}/health",
                                                "failures": 1, "timeout": 1, "service": "orders"}]}}).probes

    def probe() -> str:
        decision = http_probe.run_probes(cfg, rt.db, rt, lambda i: None, host="h",
                                         now=lambda: datetime.now(timezone.utc))[0]
        return decision.condition.incident_id

    return probe


def test_a_fix_proven_for_refused_is_not_applied_to_a_500(rt):
    port = free_port()
    probe = prober(rt, port)

    refused = probe()                       # nothing listens: refused
    server = Server(port)
    try:
        five = probe()                      # now it answers 500: another failure mode, another incident
    finally:
        server.close()
    with rt.db.transaction() as conn:
        a, b = store.get_incident(conn, refused), store.get_incident(conn, five)
        assert a.fingerprint != b.fingerprint
        assert "(refused)" in a.title + a.description and "(5xx)" in b.title + b.description
        assert a.labels["failure_mode"] == "refused" and b.labels["failure_mode"] == "5xx"
        for _ in range(5):                  # the restart is proven for refused connections
            history.record_fix_attempt(conn, a.fingerprint, "restart-orders", success=True)
        conn.execute("UPDATE incidents SET status = 'closed' WHERE id = %s", (a.id,))

    with rt.db.transaction() as conn:
        b = store.get_incident(conn, five)
        on_500 = commander.assess(b, pipeline.commander_context(conn, rt, b))
    assert on_500.decision is commander.Decision.AUTOMATE     # not auto-fixed by the refused record

    again = probe()                         # refused again: that pattern is proven
    assert again not in (refused, five)
    with rt.db.transaction() as conn:
        c = store.get_incident(conn, again)
        on_refused = commander.assess(c, pipeline.commander_context(conn, rt, c))
    assert on_refused.decision is commander.Decision.AUTO_FIX and on_refused.runbook == "restart-orders"


def test_failing_another_way_while_the_incident_is_being_fixed_is_counted_on_it_not_opened_anew(rt):
    """A restart refuses connections for a moment: while the fixer works on the 500, the probe's
    'refused' is that incident's, not a second one; once the incident is with people it is its own again."""
    port = free_port()
    probe = prober(rt, port)

    server = Server(port)
    try:
        five = probe()
    finally:
        server.close()
    with rt.db.transaction() as conn:
        conn.execute("UPDATE incidents SET status = 'fixing' WHERE id = %s", (five,))
    during_the_fix = probe()                # refused while the fixer restarts the service
    with rt.db.transaction() as conn:
        fixed = store.get_incident(conn, five)
        count = conn.execute("SELECT count(*) AS n FROM incidents").fetchone()["n"]
    assert during_the_fix == five and count == 1
    assert fixed.occurrences == 2 and fixed.labels["failure_mode"] == "5xx"

    with rt.db.transaction() as conn:
        conn.execute("UPDATE incidents SET status = 'escalated' WHERE id = %s", (five,))
    after = probe()                         # still refused, the incident is with people now: its own pattern
    with rt.db.transaction() as conn:
        refused = store.get_incident(conn, after)
    assert after != five and refused.labels["failure_mode"] == "refused"
