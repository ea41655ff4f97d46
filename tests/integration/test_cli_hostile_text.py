"""Event text is data on the on-call's terminal: markup is shown, never interpreted; escapes never reach it raw."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg
import pytest

from erdu_tasks.model import Severity, Status
from erdu_tasks.store import incidents as store
from erdu_tasks.store.incidents import NewIncident

HOSTILE = {
    "unbalanced markup": "Disk full [/] on [bold]db-1",
    "clear screen": "Payment failed \x1b[2J\x1b[H after retry",
    "title rewrite": "Queue stuck \x1b]0;owned\x07 here",
    "bidi override": "Login error \u202etxt.exe",
    "carriage return": "Checkout failed\rOK all good",
}


@pytest.fixture()
def hostile_incidents(fresh_database_url):
    with psycopg.connect(fresh_database_url, row_factory=psycopg.rows.dict_row) as conn:
        ids = {}
        for name, title in HOSTILE.items():
            ids[name] = store.upsert_incident(conn, NewIncident(
                fingerprint=f"hostile-{len(ids)}", template=title, title=title, description=title,
                severity=Severity.P1, source="log", service="[red]svc[/red]\x1b[31m", host=None,
                affected_services=[], tags=[], labels={}, error_details={}, samples=[title], count=1)).incident_id
        store.transition(conn, ids["clear screen"], expected=[Status.DETECTED], to=Status.ASSIGNED, actor="commander",
                         what="assessed \x1b[5m[blink]" + HOSTILE["unbalanced markup"])
        conn.commit()
    return fresh_database_url, ids


def erdu(database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ERDU_DATABASE_URL": database_url, "COLUMNS": "200", "TERM": "xterm"}
    env.pop("ERDU_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "erdu_tasks.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def assert_safe(output: str) -> None:
    for char in ("\x1b", "\x07", "\u202e", "\r"):
        assert char not in output, f"{char!r} reached the terminal"


def test_incidents_ls_shows_markup_and_escapes_as_text(hostile_incidents):
    url, _ = hostile_incidents
    done = erdu(url, "incidents", "ls")
    assert done.returncode == 0, done.stderr
    assert_safe(done.stdout)
    assert "[/]" in done.stdout and "[bold]" in done.stdout
    assert "\\x1b[2J" in done.stdout


@pytest.mark.slow(11)
def test_incidents_show_prints_every_hostile_field_safely(hostile_incidents):
    url, ids = hostile_incidents
    for name, incident_id in ids.items():
        done = erdu(url, "incidents", "show", incident_id)
        assert done.returncode == 0, (name, done.stderr)
        assert_safe(done.stdout)
        assert "[red]svc[/red]" in done.stdout
    shown = erdu(url, "incidents", "show", ids["clear screen"]).stdout
    assert "[blink]" in shown and "\\x1b[5m" in shown


def test_incidents_report_strips_escapes_from_the_report_file(hostile_incidents, tmp_path):
    url, ids = hostile_incidents
    report = tmp_path / "r.md"
    report.write_text("# Title \x1b[2J\n\nline two\x07\n", encoding="utf-8")
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE incidents SET report_path = %s WHERE id = %s", (str(report), ids["clear screen"]))
    done = erdu(url, "incidents", "report", ids["clear screen"])
    assert done.returncode == 0, done.stderr
    assert_safe(done.stdout)
    assert "line two" in done.stdout and "\n" in done.stdout
