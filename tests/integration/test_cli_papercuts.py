"""The CLI at 3 a.m., continued: `incidents watch`, `failed retry` that says what it did, clean --help, and
`erdu up`'s table naming ERDU's own metrics endpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import psycopg
import pytest
from psycopg.rows import dict_row
from typer.testing import CliRunner

from erdu_tasks.cli.main import app
from erdu_tasks.devstack.supervisor import build_children
from erdu_tasks.model import Severity, Status
from erdu_tasks.settings import Settings
from erdu_tasks.store import incidents as store
from erdu_tasks.store.watch import Follower
from tests.conftest import wait_for
from tests.integration.test_cli_hostile_text import erdu


def open_incident(conn, n: int, description: str = "") -> str:
    iid = store.upsert_incident(conn, store.NewIncident(
        fingerprint=f"watch-{n}", template=f"Queue stalled {n}", title=f"Queue stalled {n}",
        description=description,
        severity=Severity.P2, source="log", service="billing", host=None, affected_services=[], tags=[],
        labels={}, error_details={}, samples=[], count=1)).incident_id
    store.add_timeline(conn, iid, actor="ingest", what="detected")
    return iid


@pytest.fixture()
def conn(fresh_database_url):
    with psycopg.connect(fresh_database_url, autocommit=True, row_factory=dict_row) as c:
        yield c


def test_watch_shows_the_open_incidents_then_each_change_and_stops_cleanly_on_ctrl_c(fresh_database_url, conn):
    before = open_incident(conn, 0, "Queue stalled on shard 17: 4096 messages waiting")
    env = {**os.environ, "ERDU_DATABASE_URL": fresh_database_url, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    env.pop("ERDU_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", "incidents", "watch", "--interval", "0.2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("watching every" in line for line in lines), 30, what="the first table")
        assert any(before in line for line in lines)
        assert any("shard 17" in line for line in lines), lines        # the concrete message below the title
        new = open_incident(conn, 1)
        assert store.transition(conn, new, expected=[Status.DETECTED], to=Status.ASSIGNED, actor="commander",
                                what="assessed: automate")
        wait_for(lambda: any(new in line and "detected → assigned" in line for line in lines), 30,
                 what="the status change")
        assert any(line.split()[1:3] == ["new", new] for line in lines), lines
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(5)
    stderr = proc.stderr.read()
    assert code == 0 and "Traceback" not in stderr, stderr
    assert lines[-1].strip() == "stopped watching"


def test_a_row_whose_transaction_commits_late_is_still_reported_once(fresh_database_url, conn):
    follower = Follower.from_now(conn)
    first = open_incident(conn, 2)
    with psycopg.connect(fresh_database_url, row_factory=dict_row) as late:
        store.add_timeline(late, first, actor="person:alice", what="a note written slowly")   # id taken, uncommitted
        store.add_timeline(conn, first, actor="commander", what="assessed")
        assert [c.what for c in follower.poll(conn)] == ["detected", "assessed"]
        late.commit()
    assert [c.what for c in follower.poll(conn)] == ["a note written slowly"]
    assert follower.poll(conn) == []


def test_failed_retry_all_with_nothing_to_do_says_so(fresh_database_url, conn):
    # An incident that cannot be retried exits 1 with the reason: tests/integration/test_failed.py.
    open_incident(conn, 3)
    nothing = erdu(fresh_database_url, "failed", "retry", "--all")
    assert nothing.returncode == 0 and "nothing to retry" in nothing.stdout, (nothing.stdout, nothing.stderr)


def test_help_shows_no_type_on_flags_but_keeps_it_on_options_with_values():
    runner = CliRunner()
    for args in (["up", "--help"], ["incidents", "ls", "--help"]):
        done = runner.invoke(app, args, env={"COLUMNS": "120"})
        assert done.exit_code == 0, done.output
        assert "<bool>" not in done.output and "--help" in done.output
    assert "<int>" in runner.invoke(app, ["incidents", "ls", "--help"], env={"COLUMNS": "120"}).output


def test_the_up_table_puts_erdus_metrics_on_the_api_row_not_flowers():
    children = {c.name: c for c in build_children(Settings(), with_api=True, with_flower=True)}
    api, flower = children["api"], children["flower"]
    assert f"{api.ready_port}/metrics" in api.where
    assert "metrics" not in flower.where
