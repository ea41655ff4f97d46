"""Grouping people teach and versions that keep incidents whole, against a real Postgres (fast tier)."""

from __future__ import annotations

from types import SimpleNamespace

import psycopg
import pytest

from erdu_tasks.catalog import Catalog
from erdu_tasks.ingest import grouping
from erdu_tasks.ingest.accept import accept
from erdu_tasks.ingest.detect.fingerprint import fingerprint, previous_keys
from erdu_tasks.ingest.detect.rules import RuleSet
from erdu_tasks.model import Event, Severity
from erdu_tasks.store import incidents as store
from erdu_tasks.store.db import Database
from tests.conftest import create_database, drop_database_later
from tests.integration.test_cli_hostile_text import erdu

pytestmark = pytest.mark.xdist_group("grouping")   # one module database, on one worker


@pytest.fixture(scope="module")
def rt():
    """One database for the module: the overrides a test makes name only its own messages."""
    url = create_database()
    db = Database(url)
    yield SimpleNamespace(db=db, rules=RuleSet.load(None), catalog=Catalog.load(None), url=url,
                          settings=SimpleNamespace(flap_window_seconds=0.0))
    db.close()
    drop_database_later(url)


def send(rt, *messages: str, service: str = "shop") -> list[str]:
    result = accept(rt.db, [Event(message=m, source="log", service=service) for m in messages], rt)
    return [o.incident_id for o in result.outcomes]


def one(rt, sql: str, *params):
    with rt.db.transaction() as conn:
        return conn.execute(sql, params).fetchone()


def test_why_names_the_template_the_masked_values_and_their_rules(rt):
    [incident] = send(rt, "ERROR upload of /srv/data/a.csv failed after 3001ms for user=alice")
    with rt.db.transaction() as conn:
        found = grouping.why(conn, incident)
    assert found["template"] == "ERROR upload of <*> failed after <*> for user=<*>"
    assert found["version"] == 3 and found["step"].startswith("single line")
    assert [(m["text"], m["rules"]) for m in found["masked"]] == [
        ("/srv/data/a.csv", ["file path"]), ("3001ms", ["duration or size"]), ("alice", ["value of key=value"])]
    shown = erdu(rt.url, "incidents", "why", incident)
    assert shown.returncode == 0, shown.stderr
    assert "duration or size" in shown.stdout and "ERROR upload of <*> failed after <*>" in shown.stdout


def test_a_merge_sends_new_events_to_the_target_and_the_learned_fixes_follow(rt):
    [a] = send(rt, "ERROR payment gateway timed out for order 17")
    [b] = send(rt, "ERROR payment provider unreachable for order 9")
    fa, fb = (one(rt, "SELECT fingerprint FROM incidents WHERE id = %s", i)["fingerprint"] for i in (a, b))
    with rt.db.transaction() as conn:
        conn.execute("INSERT INTO pattern_action_stats (fingerprint, runbook, attempts, successes)"
                     " VALUES (%s, 'restart-gateway', 5, 4), (%s, 'restart-gateway', 2, 1)", (fa, fb))
        said = grouping.merge(conn, a, fb, by="dana", note="same outage")
    assert f"new occurrences go to {b}" in said
    [landed] = send(rt, "ERROR payment gateway timed out for order 18")
    assert landed == b                                      # at once: the next batch reads the new version
    stats = one(rt, "SELECT attempts, successes FROM pattern_action_stats WHERE fingerprint = %s", fb)
    assert (stats["attempts"], stats["successes"]) == (7, 5)
    assert one(rt, "SELECT count(*) AS n FROM pattern_action_stats WHERE fingerprint = %s", fa)["n"] == 0
    pattern = one(rt, "SELECT incidents FROM error_patterns WHERE fingerprint = %s", fb)
    assert pattern["incidents"] == 2
    with rt.db.transaction() as conn:
        with pytest.raises(grouping.GroupingRefused, match="already"):
            grouping.merge(conn, fb, fa, by="dana")         # a cycle is refused
        with pytest.raises(grouping.GroupingRefused, match="no incident or pattern"):
            grouping.merge(conn, fa, "0123456789abcdef", by="dana")


def test_a_merge_into_a_fingerprint_with_no_open_incident_moves_the_open_one(rt):
    [a] = send(rt, "ERROR thumbnail render crashed on image 5")
    target = fingerprint("ERROR thumbnail worker lost", "shop").key
    with rt.db.transaction() as conn:
        conn.execute("INSERT INTO error_patterns (fingerprint, template) VALUES (%s, 'ERROR thumbnail worker lost')",
                     (target,))
        assert a in grouping.merge(conn, a, target, by="dana")
    assert one(rt, "SELECT fingerprint FROM incidents WHERE id = %s", a)["fingerprint"] == target
    assert send(rt, "ERROR thumbnail render crashed on image 6", "ERROR thumbnail worker lost") == [a]


def test_a_split_gives_each_value_of_the_chosen_slot_its_own_incident(rt):
    [first] = send(rt, "ERROR refund failed for merchant m-104 code 7")
    with rt.db.transaction() as conn:
        with pytest.raises(grouping.GroupingRefused, match="choose 1 to 2"):
            grouping.split(conn, first, 3, by="dana")
        grouping.split(conn, first, 1, by="dana", note="each merchant has its own contract")
    x = send(rt, "ERROR refund failed for merchant m-104 code 9")
    y = send(rt, "ERROR refund failed for merchant m-207 code 7")
    z = send(rt, "ERROR refund failed for merchant m-207 code 3")
    assert x != y and y == z and first not in x + y
    with rt.db.transaction() as conn:
        found = grouping.why(conn, y[0])
    assert "«m-207»" in found["template"] and any("split" in s for s in found["steps"])
    with rt.db.transaction() as conn:
        override = grouping.listing(conn)[-1]
        grouping.remove(conn, override["id"])
    assert send(rt, "ERROR refund failed for merchant m-999 code 1") == [first]   # back as before the split


TRACE = """ERROR job failed
Traceback (most recent call last):
  File "/srv/app/jobs.py", line 12, in run
    total = prices[sku]
KeyError: 'sku-{n}'"""


def test_a_new_grouping_version_never_splits_an_open_incident(rt):
    message = TRACE.format(n=1)
    old_key = previous_keys(message, "shop")[1]
    assert old_key != fingerprint(message, "shop").key
    with rt.db.transaction() as conn:   # an incident opened before version 2, under its version-1 key
        old = store.upsert_incident(conn, store.NewIncident(
            fingerprint=old_key, template="Traceback KeyError at jobs.py:run", title="KeyError", description=message,
            severity=Severity.P3, source="log", service="shop", host=None, affected_services=[], tags=[], labels={},
            error_details={"message": message}, samples=[], count=1)).incident_id
    assert send(rt, TRACE.format(n=2), TRACE.format(n=3)) == [old]
    assert one(rt, "SELECT occurrences FROM incidents WHERE id = %s", old)["occurrences"] == 3
    with rt.db.transaction() as conn:
        assert grouping.why(conn, old)["version"] == 1
        conn.execute("UPDATE incidents SET status = 'closed', closed_at = now() WHERE id = %s", (old,))
    [new] = send(rt, TRACE.format(n=4))                    # once it closed, today's key takes over
    assert new != old
    with rt.db.transaction() as conn:
        assert grouping.why(conn, new)["version"] == 3


LOCK = 'acquire lock={n}, flags=0x1, tag="View Lock", name=com.android.systemui, uid=10037'


def test_an_incident_opened_under_version_2_keeps_its_messages_whose_version_3_key_differs(rt):
    message = LOCK.format(n=233570404)
    now = fingerprint(message, "phone")
    old_key = previous_keys(message, "phone")[2]          # version 2 kept the quoted "View Lock" as words
    assert old_key != now.key and "tag=<*>" in now.template
    with rt.db.transaction() as conn:
        old = store.upsert_incident(conn, store.NewIncident(
            fingerprint=old_key, template='acquire lock=<*>, flags=<*>, tag="View Lock", name=<*>, uid=<*>',
            title="acquire lock", description=message, severity=Severity.P3, source="log", service="phone",
            host=None, affected_services=[], tags=[], labels={},
            error_details={"message": message, "grouping": {"version": 2, "key": old_key}},
            samples=[], count=1)).incident_id
    assert send(rt, LOCK.format(n=1), LOCK.format(n=2), service="phone") == [old]
    assert one(rt, "SELECT occurrences FROM incidents WHERE id = %s", old)["occurrences"] == 3
    with rt.db.transaction() as conn:
        assert grouping.why(conn, old)["version"] == 2
        conn.execute("UPDATE incidents SET status = 'closed', closed_at = now() WHERE id = %s", (old,))
    [new] = send(rt, LOCK.format(n=3), service="phone")   # once it closed, the version-3 key takes over
    assert new != old and one(rt, "SELECT fingerprint FROM incidents WHERE id = %s", new)["fingerprint"] == now.key
    with rt.db.transaction() as conn:
        assert grouping.why(conn, new)["version"] == 3


def test_the_override_cache_reloads_only_when_the_version_moves(rt):
    with psycopg.connect(rt.url, row_factory=psycopg.rows.dict_row) as conn:
        first = grouping.current(conn)
        assert grouping.current(conn) is first
        conn.execute("UPDATE grouping_state SET version = version + 1")
        assert grouping.current(conn) is not first
