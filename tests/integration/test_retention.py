"""Retention (`erdu prune`, beat's erdu.prune): closed incidents past the period are archived whole and
deleted; nothing open goes whatever its age; learned patterns and the rollups keep what the pruned taught."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import psycopg
import pytest
from psycopg.rows import dict_row

from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings
from erdu_tasks.store import stats
from erdu_tasks.store.retention import candidates_sql, read_archive
from erdu_tasks.tasks.retention import run_prune


def _q(url: str, sql: str, args=()) -> list[dict]:
    with psycopg.connect(url, row_factory=dict_row, autocommit=True) as conn:
        cur = conn.execute(sql, args)
        return cur.fetchall() if cur.description else []


def _incident(url: str, iid: str, *, status: str, closed_days_ago: float | None, created_days_ago: float,
              fingerprint: str = "fp-old", parent: str | None = None, report=None) -> None:
    _q(url, """
        INSERT INTO incidents (id, fingerprint, title, severity, status, source, service, created_at, last_seen,
                               status_changed_at, resolved_at, closed_at, parent_id, report_path)
        VALUES (%(id)s, %(fp)s, 'Disk full on /var/' || %(id)s, 'P2', %(st)s, 'logs', 'api',
                now() - make_interval(secs => %(cd)s * 86400), now() - make_interval(secs => %(cd)s * 86400),
                coalesce(now() - make_interval(secs => %(xd)s * 86400), now()),
                now() - make_interval(secs => %(xd)s * 86400), now() - make_interval(secs => %(xd)s * 86400),
                %(parent)s, %(report)s)
        """, {"id": iid, "fp": fingerprint, "st": status, "cd": created_days_ago, "xd": closed_days_ago,
              "parent": parent, "report": str(report) if report else None})
    for i, (to, actor) in enumerate([("assigned", "commander"), ("investigating", "diagnostician")]):
        _q(url, "INSERT INTO incident_timeline (incident_id, at, actor, what, to_status)"
                " VALUES (%s, now() - make_interval(secs => %s * 86400), %s, %s, %s)",
           (iid, created_days_ago - 0.001 * (i + 1), actor, f"step {i}", to))


@pytest.fixture()
def rt(fresh_database_url, tmp_path):
    runtime = Runtime(load_settings(database_url=fresh_database_url, state_dir=tmp_path / "var",
                                    retention={"incidents": "90d", "batch": 2}))
    yield runtime
    runtime.db.close()


@pytest.fixture()
def history(rt, tmp_path):
    url = rt.settings.database_url
    report = tmp_path / "INC-old-1.md"
    report.write_text("# Report\nthe disk was cleaned\n")
    _incident(url, "INC-old-1", status="closed", closed_days_ago=100, created_days_ago=101, report=report)
    _incident(url, "INC-old-2", status="closed", closed_days_ago=95, created_days_ago=96)
    _incident(url, "INC-old-3", status="closed", closed_days_ago=91, created_days_ago=120, fingerprint="fp-other")
    _incident(url, "INC-recent", status="closed", closed_days_ago=10, created_days_ago=11)
    # Open for 200 days (escalated, never closed): never pruned. Its parent is an old closed one.
    _incident(url, "INC-open", status="escalated", closed_days_ago=None, created_days_ago=200,
              fingerprint="fp-open", parent="INC-old-3")
    _q(url, "UPDATE incidents SET resolved_at = NULL, closed_at = NULL WHERE id = 'INC-open'")
    _q(url, "INSERT INTO error_patterns (fingerprint, template, title, occurrences, incidents)"
            " VALUES ('fp-old', 'Disk full on <*>', 'Disk full', 3, 3)")
    _q(url, "INSERT INTO pattern_action_stats (fingerprint, runbook, attempts, successes, last_attempt_at,"
            " last_outcome) VALUES ('fp-old', 'clean-disk', 3, 3, now() - interval '95 days', 'success')")
    return url


def test_prune_archives_and_deletes_only_closed_incidents_past_the_period(rt, history):
    url = history
    with rt.db.transaction() as conn:
        before = stats.overall(conn).as_dict()
    dry = run_prune(rt, dry_run=True)
    assert (dry.incidents, dry.timeline) == (3, 6)
    assert _q(url, "SELECT count(*) AS n FROM incidents")[0]["n"] == 5   # a dry run changes nothing

    done = run_prune(rt, by="test")
    left = {r["id"] for r in _q(url, "SELECT id FROM incidents")}
    assert left == {"INC-recent", "INC-open"}
    assert (done.incidents, done.timeline) == (3, 6)
    assert _q(url, "SELECT count(*) AS n FROM incident_timeline WHERE incident_id LIKE 'INC-old%%'")[0]["n"] == 0
    # The open incident keeps its record and loses only the link to its pruned parent.
    assert _q(url, "SELECT parent_id FROM incidents WHERE id = 'INC-open'")[0]["parent_id"] is None

    # Everything pruned is in the archive, whole: the row, its timeline and its report.
    [path] = done.archives
    records = {r["incident"]["id"]: r for r in read_archive(__import__("pathlib").Path(path))}
    assert set(records) == {"INC-old-1", "INC-old-2", "INC-old-3"}
    assert [t["what"] for t in records["INC-old-1"]["incident_timeline"]] == ["step 0", "step 1"]
    assert "the disk was cleaned" in records["INC-old-1"]["report_markdown"]

    # What the pruned incidents taught stays: patterns, their success figures and the all-time totals.
    assert _q(url, "SELECT successes FROM pattern_action_stats WHERE fingerprint = 'fp-old'")[0]["successes"] == 3
    assert _q(url, "SELECT incidents FROM error_patterns WHERE fingerprint = 'fp-old'")[0]["incidents"] == 3
    with rt.db.transaction() as conn:
        after = stats.overall(conn).as_dict()
    assert after["incidents"] == before["incidents"] == 5
    assert after["resolved"] == before["resolved"]
    assert _q(url, "SELECT incidents FROM prune_runs ORDER BY id DESC LIMIT 1")[0]["incidents"] == 3
    # Nothing is left to do.
    assert run_prune(rt).incidents == 0


def test_an_archive_that_cannot_be_written_deletes_nothing(rt, history, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the archive directory should be")
    broken = Runtime(load_settings(database_url=rt.settings.database_url,
                                   retention={"incidents": "90d", "archive_dir": str(blocker / "archive")}))
    try:
        with pytest.raises(OSError):
            run_prune(broken)
    finally:
        broken.db.close()
    assert _q(history, "SELECT count(*) AS n FROM incidents")[0]["n"] == 5


def test_retention_off_prunes_no_incident(fresh_database_url, tmp_path):
    rt = Runtime(load_settings(database_url=fresh_database_url, retention={"incidents": "off"}))
    try:
        _incident(fresh_database_url, "INC-ancient", status="closed", closed_days_ago=3000, created_days_ago=3001)
        assert run_prune(rt).incidents == 0
        assert run_prune(rt, older_than=timedelta(days=30)).incidents == 1   # explicit, as `erdu prune --older-than`
    finally:
        rt.db.close()


def test_the_prune_walks_the_closed_at_index_at_a_realistic_size(fresh_database_url):
    url = fresh_database_url
    # The rows go in without the rollup triggers (session_replication_role): only the plan is under test.
    _q(url, """
        SET session_replication_role = replica;
        INSERT INTO incidents (id, fingerprint, title, severity, status, source, created_at, status_changed_at,
                               resolved_at, closed_at)
        SELECT 'INC-' || g, 'fp-' || g, 'Routine ' || g, 'P3', CASE WHEN g %% 50 = 0 THEN 'escalated'
               ELSE 'closed' END, 'logs', now() - make_interval(mins => g), now() - make_interval(mins => g),
               now() - make_interval(mins => g), CASE WHEN g %% 50 = 0 THEN NULL ELSE now() - make_interval(mins => g) END
        FROM generate_series(1, 5000) AS g;
        SET session_replication_role = DEFAULT
        """)
    _q(url, "ANALYZE incidents")
    plan = "\n".join(r["QUERY PLAN"] for r in _q(url, "EXPLAIN " + candidates_sql().replace(" FOR UPDATE SKIP LOCKED", ""),
                                                  ("2020-01-01", 500)))
    assert "incidents_closed_at" in plan, plan


def test_erdu_prune_cli_dry_run_and_bad_input(rt, history):
    env = {"ERDU_DATABASE_URL": history, "PATH": "/usr/bin:/bin", "ERDU_STATE_DIR": str(rt.settings.state_dir)}
    cli = [sys.executable, "-m", "erdu_tasks.cli"]
    out = subprocess.run([*cli, "prune", "--dry-run", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["incidents"] == 3
    bad = subprocess.run([*cli, "prune", "--older-than", "5m"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "at least 1h" in (bad.stdout + bad.stderr)
    assert _q(history, "SELECT count(*) AS n FROM incidents")[0]["n"] == 5
