"""The CLI at 3 a.m.: unique id prefixes, ids that do not exist, filters that can never match."""

from __future__ import annotations

import psycopg
import pytest

from erdu_tasks.model import Severity
from erdu_tasks.store import incidents as store
from erdu_tasks.store.incidents import NewIncident
from tests.integration.test_cli_hostile_text import erdu


@pytest.fixture()
def two_incidents(fresh_database_url):
    with psycopg.connect(fresh_database_url, row_factory=psycopg.rows.dict_row) as conn:
        ids = [store.upsert_incident(conn, NewIncident(
            fingerprint=f"ids-{n}", template=f"Cache miss storm {n}", title=f"Cache miss storm {n}",
            description="", severity=Severity.P3, source="log", service="cache", host=None, affected_services=[],
            tags=[], labels={}, error_details={}, samples=[], count=1)).incident_id for n in range(2)]
        conn.commit()
    return fresh_database_url, ids


def common_prefix(a: str, b: str) -> str:
    n = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    return a[:n]


def test_a_unique_prefix_names_its_incident_and_an_ambiguous_one_lists_the_candidates(two_incidents):
    url, (first, second) = two_incidents
    shared = common_prefix(first, second)
    done = erdu(url, "incidents", "show", first[:len(shared) + 1])
    assert done.returncode == 0, done.stderr
    assert first in done.stdout and second not in done.stdout
    without_inc = erdu(url, "incidents", "show", shared.removeprefix("INC-"))   # ambiguous, INC- left out
    assert without_inc.returncode == 1 and first in without_inc.stderr and second in without_inc.stderr
    acked = erdu(url, "incidents", "ack", second[:len(shared) + 1])
    assert acked.returncode == 0 and second in acked.stdout, acked.stderr


@pytest.mark.parametrize("command", [("incidents", "show"), ("incidents", "report"), ("incidents", "ack"),
                                     ("incidents", "resolve"), ("failed", "retry")])
def test_an_id_that_does_not_exist_exits_1_and_says_so(two_incidents, command):
    url, _ = two_incidents
    done = erdu(url, *command, "INC-19990101000000-nothere")
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "no incident INC-19990101000000-nothere" in done.stderr


@pytest.mark.parametrize(("option", "value", "allowed"), [("--status", "bogus", "awaiting_approval"),
                                                          ("--severity", "P9", "P5")])
def test_a_filter_that_can_never_match_is_refused_naming_the_allowed_values(two_incidents, option, value, allowed):
    url, _ = two_incidents
    done = erdu(url, "incidents", "ls", option, value)
    assert done.returncode == 2 and value in done.stderr and allowed in done.stderr, done.stderr
    ok = erdu(url, "incidents", "ls", "--severity", "p3", "--json")
    assert ok.returncode == 0 and len(ok.stdout.splitlines()) == 2


def test_a_person_action_takes_by_and_note_and_the_timeline_keeps_both(two_incidents):
    url, (first, _) = two_incidents
    done = erdu(url, "incidents", "ack", first, "--by", "alice", "--note", "looking at the cache nodes")
    assert done.returncode == 0 and "acknowledged by alice" in done.stdout, done.stderr
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        whats = [r["what"] for r in conn.execute(
            "SELECT actor, what FROM incident_timeline WHERE incident_id = %s ORDER BY id", (first,))]
    assert "acknowledged by alice" in whats
    assert "note by alice (ack): looking at the cache nodes" in whats
    assert erdu(url, "incidents", "ack", first, "--by", " ").returncode == 2


@pytest.mark.parametrize("action", ["ack", "resolve", "approve", "retry"])
def test_every_person_action_offers_by_and_note(action):
    from typer.testing import CliRunner

    from erdu_tasks.cli.main import app

    shown = CliRunner().invoke(app, ["incidents", action, "--help"], env={"COLUMNS": "200"}).output
    assert "--by" in shown and "--note" in shown, shown


def test_ls_shows_every_id_whole_at_80_columns(two_incidents):
    import os
    import subprocess
    import sys

    url, ids = two_incidents
    env = {**os.environ, "ERDU_DATABASE_URL": url, "COLUMNS": "80", "TERM": "xterm"}
    env.pop("ERDU_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "erdu_tasks.cli", "incidents", "ls"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert all(incident_id in done.stdout for incident_id in ids), done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= 80


def test_show_prints_host_labels_the_first_occurrence_and_the_whole_timeline(fresh_database_url):
    trace = "Traceback (most recent call last):\n  File \"app.py\", line 3, in <module>\nKeyError: 'cart-17'"
    with psycopg.connect(fresh_database_url, row_factory=psycopg.rows.dict_row) as conn:
        iid = store.upsert_incident(conn, NewIncident(
            fingerprint="show-1", template="KeyError <*>", title="KeyError in checkout", description=trace,
            severity=Severity.P2, source="log", service="checkout", host="web-3", affected_services=[],
            tags=["python"], labels={"region": "eu"}, error_details={}, samples=[], count=1)).incident_id
        long_what = "restarted the checkout pool after draining " + "every connection " * 12 + "END-OF-NOTE"
        store.add_timeline(conn, iid, actor="person:alice", what=long_what)
        conn.commit()
    done = erdu(fresh_database_url, "incidents", "show", iid)
    assert done.returncode == 0, done.stderr
    flat = " ".join(done.stdout.split())
    assert "host: web-3" in flat and "region=eu" in flat and "tags: python" in flat
    assert "KeyError: 'cart-17'" in done.stdout and 'File "app.py", line 3' in done.stdout
    assert "END-OF-NOTE" in flat   # the timeline is not cut


@pytest.mark.slow(12)
def test_failed_show_prints_a_failed_task_whole_and_dismiss_takes_it_off_the_open_list(two_incidents):
    url, (first, _) = two_incidents
    error = "TypeError: diagnose() takes 1 positional argument\n" + "frame line\n" * 5 + "END-OF-ERROR"
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        failed_id = conn.execute("INSERT INTO failed_tasks (task_id, task_name, stage, incident_id, error, worker)"
                                 " VALUES ('t-1', 'erdu.diagnose', 'diagnose', %s, %s, 'diagnostician@h/1')"
                                 " RETURNING id", (first, error)).fetchone()["id"]
        conn.commit()
    shown = erdu(url, "failed", "show", str(failed_id))
    assert shown.returncode == 0, shown.stderr
    assert "erdu.diagnose" in shown.stdout and "END-OF-ERROR" in shown.stdout and first in shown.stdout
    assert erdu(url, "failed", "show", "999999").returncode == 1
    listed = erdu(url, "failed", "ls")
    assert "erdu.diagnose" in listed.stdout
    done = erdu(url, "failed", "dismiss", str(failed_id), "--by", "carol", "--note", "poison from the old release")
    assert done.returncode == 0 and "dismissed by carol" in done.stdout, done.stderr
    assert "erdu.diagnose" not in erdu(url, "failed", "ls").stdout
    assert "erdu.diagnose" in erdu(url, "failed", "ls", "--all").stdout
    again = erdu(url, "failed", "dismiss", str(failed_id))
    assert again.returncode == 1 and "already dismissed" in again.stderr
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        whats = [r["what"] for r in conn.execute("SELECT what FROM incident_timeline WHERE incident_id = %s",
                                                 (first,))]
    assert f"failed task #{failed_id} (erdu.diagnose) dismissed by carol: poison from the old release" in whats
