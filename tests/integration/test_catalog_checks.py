"""Catalog-driven checks through the fix stage's body against real Postgres (no workers): a runbook
validates with the service's catalog health check (`check: from_catalog`), and its params use catalog
fields (`{catalog.supervisor}`) under the same value check as `{service}`."""

from __future__ import annotations

import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from erdu_tasks.errors import ConfigError
from erdu_tasks.catalog import Catalog
from erdu_tasks.ingest.accept import accept
from erdu_tasks.model import Event
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings
from erdu_tasks.store import incidents as store
from erdu_tasks.tasks import fix as fix_stage


@pytest.fixture()
def health():
    state = {"status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(state["status"])
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/health"
    yield state
    server.shutdown()
    server.server_close()


def make_rt(database_url: str, tmp: Path, health_url: str) -> Runtime:
    folder = tmp / "runbooks"
    folder.mkdir()
    (folder / "rb.yaml").write_text(textwrap.dedent("""
        runbooks:
          - name: restart-by-catalog
            match: {services: [orders, billing, shop]}
            actions:
              - action: run_command
                params: {argv: ["echo", "restart", "{catalog.supervisor}", "owned by", "{catalog.owner}"]}
            validation: {check: from_catalog, attempts: 1, stable_for: 0}
            limits: {max_runs: 100, per_seconds: 3600}
    """))
    catalog = tmp / "catalog.yaml"
    catalog.write_text(textwrap.dedent(f"""
        services:
          - {{name: orders, owner: team-orders, supervisor: orders-web, health: {{url: "{health_url}",
             expect_status: 200, timeout: 2}}}}
          - {{name: billing, owner: "Team Billing; rm -rf /", supervisor: billing, health: {{argv: ["true"]}}}}
          - {{name: shop, owner: team-shop, supervisor: shop}}
    """))
    return Runtime(load_settings(database_url=database_url, runbooks_dir=folder, catalog_file=catalog,
                                 reports_dir=tmp / "reports"))


def fix(rt: Runtime, service: str) -> tuple[str, dict]:
    ids = accept(rt.db, [Event(source="api", message=f"ERROR {service} worker pool exhausted", service=service)],
                 rt).new_incidents
    with rt.db.transaction() as conn:
        conn.execute("UPDATE incidents SET status = 'investigating' WHERE id = %s", (ids[0],))
        outside = fix_stage.FIX_BODY(conn, rt, store.get_incident(conn, ids[0], for_update=True), "test")
    outcome = outside.act()
    with rt.db.transaction() as conn:
        outside.settle(conn, outcome)
        status = store.get_incident(conn, ids[0]).status.value
    return status, outcome


def test_a_runbook_validates_with_the_catalog_health_check_and_uses_catalog_fields(fresh_database_url, tmp_path,
                                                                                  health):
    rt = make_rt(fresh_database_url, tmp_path, health["url"])
    try:
        status, outcome = fix(rt, "orders")
        assert outcome["actions"][0]["output"]["stdout"].strip() == "restart orders-web owned by team-orders"
        assert outcome["validation"]["ok"] is True and "returned 200" in outcome["validation"]["detail"]
        assert status == "resolved"

        health["status"] = 503                       # the catalog's check decides: failing now
        status, outcome = fix(rt, "orders")
        assert outcome["validation"]["ok"] is False and "returned 503" in outcome["validation"]["detail"]
        assert status == "escalated"

        status, outcome = fix(rt, "billing")         # an unsafe catalog value never reaches the argv
        assert outcome["actions"][0]["ok"] is False
        assert "refused catalog.owner value" in outcome["actions"][0]["detail"]
        assert status == "escalated"

        status, outcome = fix(rt, "shop")            # no health check in its entry: says so, not a pass
        assert outcome["validation"] == {"ok": False, "duration": 0.0,
                                         "detail": "the catalog entry of shop has no health check (health: url or argv)"}
    finally:
        rt.db.close()


def test_a_bad_catalog_health_entry_stops_start_up_with_its_place(tmp_path):
    bad = tmp_path / "catalog.yaml"
    bad.write_text("services:\n  - {name: orders, health: {url: 'ftp://x', argv: ['true']}}\n")
    with pytest.raises(ConfigError, match="health"):
        Catalog.load(bad)
    bad.write_text("services:\n  - {name: orders, pidfile: /run/orders.pid}\n")
    with pytest.raises(ConfigError, match="pidfile"):
        Catalog.load(bad)
