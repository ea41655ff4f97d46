"""Escalation to people against real Postgres: the sweeper called directly with an injected clock, each
person's webhook contact a real local HTTP server, acks and reassignments through the people's actions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from erdu_tasks.escalation import silences
from erdu_tasks.escalation.sweep import Escalator
from erdu_tasks.escalation.runs import escalation_config
from erdu_tasks.settings.people import Person
from erdu_tasks.settings.schedules import OncallConfig
from erdu_tasks.tasks import people as actions
from tests.integration.escalation_support import db, endpoints, redis_client  # noqa: F401 (fixtures)
from tests.integration.escalation_support import SECRET, escalate, new_incident, rows, timeline_whats, webhook

# A daily rotation handing off at 09:00 Berlin: alice on 2026-05-04, bob on 2026-05-05, alice on the 6th ...
BERLIN = timezone(timedelta(hours=2))   # CEST, for readable moments in May


def berlin(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 5, day, hour, minute, tzinfo=BERLIN).astimezone(timezone.utc)


def make(db, endpoints, *, policy=None, overrides=()) -> Escalator:
    people = {name: Person.model_validate({"contacts": {"webhook": f"{endpoints.url}/{name}"}})
              for name in ("alice", "bob", "carol")}
    people["dave"] = Person.model_validate({})          # nobody can reach dave
    oncall = OncallConfig.from_section({"schedules": {"primary": {
        "time_zone": "Europe/Berlin",
        "layers": [{"start": "2026-05-04", "rotation": "daily", "handoff": "09:00", "participants": ["alice", "bob"]}],
        "overrides": list(overrides)}}})
    section = {"channels": {"hook": webhook(endpoints, "/team")},
               "policies": {"P1": policy or [{"schedule": "primary", "ack_deadline": "5m"},
                                             {"schedule": "primary", "channels": ["hook"], "ack_deadline": "5m"},
                                             {"person": "carol"}]}}
    return Escalator(db=db, config=escalation_config(section, "alerts"), people=people, oncall=oncall,
                     worker="sweeper-1", jitter=lambda: 1.0, rate_prefix="test:oncall:")


def paged(endpoints) -> list[str]:
    return [r.path.lstrip("/") for r in endpoints.received]


def test_a_p1_pages_the_person_on_call_by_schedule_and_records_it(db, endpoints):
    esc = make(db, endpoints)
    t = berlin(5, 8, 30)                                   # alice's day until 09:00
    with db.transaction() as conn:
        incident = new_incident(conn, service="orders")
        escalate(conn, incident, now=t)
    esc.sweep(t)
    assert paged(endpoints) == ["alice"]
    body = endpoints.received[0]
    assert body.json["paged"] == {"person": "alice"} and body.json["incident_id"] == incident
    assert body.headers["x-erdu-signature"].startswith("sha256=")      # signed with the webhook channel's secret
    whats = timeline_whats(db, incident)
    assert "escalation level 1: paging alice (on call on primary) via webhook" in whats
    assert any(w.startswith("paged alice via webhook (level 1 notification): HTTP 200") for w in whats)
    assert SECRET not in " ".join(whats)


def test_a_handoff_mid_escalation_pages_the_new_person_at_the_next_level(db, endpoints):
    esc = make(db, endpoints)
    t = berlin(5, 8, 57)                                   # alice; level 2 falls due at 09:02, bob's day
    with db.transaction() as conn:
        incident = new_incident(conn, service="orders")
        escalate(conn, incident, now=t)
    esc.sweep(t)
    esc.sweep(t + timedelta(minutes=5, seconds=1))
    assert paged(endpoints)[0] == "alice" and sorted(paged(endpoints)[1:]) == ["bob", "team"]
    assert "escalation level 2: notifying hook; paging bob (on call on primary) via webhook" in timeline_whats(db, incident)


def test_an_ack_by_the_paged_person_stops_the_chain(db, endpoints):
    esc = make(db, endpoints)
    t = berlin(5, 10)                                      # bob's day
    with db.transaction() as conn:
        incident = new_incident(conn, service="orders")
        escalate(conn, incident, now=t)
    esc.sweep(t)
    actions.acknowledge(SimpleNamespace(db=db), incident, "bob")
    esc.sweep(t + timedelta(minutes=11))                    # levels 2 and 3 would be due by now
    assert paged(endpoints) == ["bob"]
    whats = timeline_whats(db, incident)
    assert any(w.startswith("acknowledged by bob, who was paged (level 1, schedule primary) at ") for w in whats)
    assert "escalation stopped at level 1: acknowledged" in whats
    assert rows(db, "SELECT state FROM escalation_runs WHERE incident_id = %s", (incident,))[0]["state"] == \
        "acknowledged"


def test_an_override_wins_and_an_unreachable_person_moves_the_chain_on(db, endpoints):
    esc = make(db, endpoints, overrides=[{"start": "2026-05-05T08:00", "end": "2026-05-05T12:00", "person": "dave"}])
    t = berlin(5, 10)
    with db.transaction() as conn:
        incident = new_incident(conn, service="orders")
        escalate(conn, incident, now=t)
    esc.sweep(t)
    esc.sweep(t + timedelta(seconds=1))
    whats = timeline_whats(db, incident)
    assert "escalation level 1: dave cannot be paged: no contacts" in whats
    assert "every delivery of level 1 failed: moving on to the next level" in whats
    assert paged(endpoints) == ["team"]                    # level 2: dave still on call, the team hook hears it


def test_reassign_pages_the_new_person_now_and_an_unknown_one_is_refused(db, endpoints):
    esc = make(db, endpoints)
    t = datetime.now(timezone.utc)
    with db.transaction() as conn:
        incident = new_incident(conn, service="orders")
        escalate(conn, incident, now=t)
    rt = SimpleNamespace(db=db, escalator=lambda: esc)
    done = actions.reassign(rt, incident, "carol", "alice")
    assert done.message.endswith("reassigned to carol by alice; paged via webhook")
    assert paged(endpoints) == ["carol"]
    assert endpoints.received[0].json["reason"] == "reassigned to carol by alice"
    whats = timeline_whats(db, incident)
    assert "reassigned to carol by alice: paging carol via webhook" in whats
    assert any(w.startswith("paged carol via webhook (page): HTTP 200") for w in whats)
    with pytest.raises(actions.ActionRefused, match="no person 'zed'"):
        actions.reassign(rt, incident, "zed", "alice")
    with pytest.raises(actions.ActionRefused, match="dave cannot be paged: no contacts"):
        actions.reassign(rt, incident, "dave", "alice")


def test_a_silence_reminder_goes_to_its_authors_contacts(db, endpoints):
    esc = make(db, endpoints)
    now = datetime.now(timezone.utc)
    with db.transaction() as conn:
        mine = silences.add_silence(conn, silences.parse_matchers(["service=batch"]), starts_at=now - timedelta(hours=1),
                                    ends_at=now + timedelta(minutes=10), author="carol", comment="batch upgrade", now=now)
        theirs = silences.add_silence(conn, silences.parse_matchers(["service=etl"]), starts_at=now - timedelta(hours=1),
                                      ends_at=now + timedelta(minutes=12), author="someone-else", comment="etl",
                                      now=now)
    report = esc.sweep(now)
    assert report.reminders == 2
    reminders = {r.path: r.json for r in endpoints.received}
    assert reminders["/carol"]["kind"] == "reminder" and reminders["/carol"]["reminder"]["silence_id"] == mine.id
    # An author who is not a person: the reminder goes to the first level of the default policy (built-in: every channel).
    assert reminders["/team"]["reminder"]["silence_id"] == theirs.id
    esc.sweep(now + timedelta(seconds=5))
    assert len(endpoints.received) == 2                    # once per silence


def test_the_api_answers_who_is_on_call_and_reassigns(fresh_database_url, redis_server, endpoints):
    from fastapi.testclient import TestClient

    from erdu_tasks.api.app import create_app
    from erdu_tasks.settings import load_settings
    from erdu_tasks.store.db import Database

    settings = load_settings(
        database_url=fresh_database_url, redis_url=redis_server.url,
        people={"alice": {"contacts": {"webhook": f"{endpoints.url}/alice"}}, "bob": {}},
        oncall={"schedules": {"primary": {"time_zone": "Europe/Berlin", "layers": [
            {"start": "2026-05-04", "rotation": "daily", "participants": ["alice", "bob"]}]}}},
        escalation={"channels": {"hook": webhook(endpoints, "/team")}})
    database = Database(fresh_database_url)
    try:
        with database.transaction() as conn:
            incident = new_incident(conn, service="orders")
    finally:
        database.close()
    with TestClient(create_app(settings)) as client:
        r = client.get("/v1/oncall", params={"at": "2026-05-05T08:30:00+02:00"})
        assert r.status_code == 200
        [primary] = r.json()
        assert (primary["person"], primary["next"]["to_person"]) == ("alice", "bob")
        assert primary["next"]["at"].startswith("2026-05-05T07:00:00")
        r = client.get("/v1/oncall/primary", params={"at": "2026-05-05T10:00:00Z", "count": 3})
        assert [s["person"] for s in r.json()["shifts"]] == ["bob", "alice", "bob"]
        assert client.get("/v1/oncall/nope").status_code == 404
        r = client.post(f"/v1/incidents/{incident}/reassign", json={"person": "alice", "by": "bob"})
        assert r.status_code == 200 and r.json()["message"].endswith("paged via webhook")
        assert paged(endpoints) == ["alice"]
        r = client.post(f"/v1/incidents/{incident}/reassign", json={"person": "bob", "by": "alice"})
        assert r.status_code == 409 and "bob cannot be paged: no contacts" in r.json()["detail"]
