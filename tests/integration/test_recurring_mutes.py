"""Recurring mute windows against real Postgres: the gates and the sweeper called directly, with an injected clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from erdu_tasks.escalation import runs as escalation, silences
from erdu_tasks.escalation.gates import build_gates
from erdu_tasks.settings.escalation import EscalationConfig
from erdu_tasks.store import incidents as store
from tests.integration.escalation_support import db, endpoints, redis_client  # noqa: F401 (fixtures)
from tests.integration.escalation_support import escalate, make_escalator, new_incident, timeline_whats, webhook

NIGHTS = [{"times": [{"start_time": "22:00", "end_time": "24:00"}, {"start_time": "00:00", "end_time": "06:00"}],
           "location": "Europe/Berlin"}]


def berlin(day: int, hour: int, minute: int = 0) -> datetime:
    """A wall-clock time in Berlin in May 2025 (CEST, UTC+2) as UTC."""
    return datetime(2025, 5, day, hour, minute, tzinfo=timezone(timedelta(hours=2))).astimezone(timezone.utc)


def section(endpoints, **extra):
    return {"channels": {"page": webhook(endpoints, "/page")}, "time_intervals": {"nights": NIGHTS}, **extra}


def paged(endpoints) -> list[str]:
    return [r.json["incident_id"] for r in endpoints.received]


def test_a_recurring_silence_mutes_only_inside_its_times(db, endpoints, redis_client):
    config = section(endpoints)
    intervals = EscalationConfig.from_section(config).time_intervals
    esc = make_escalator(db, config, redis=redis_client)
    gates = build_gates(rules=(), intervals=intervals)
    with db.transaction() as conn:
        nightly = silences.add_silence(conn, silences.parse_matchers(["service=batch"]), starts_at=berlin(1, 0),
                                       ends_at=berlin(20, 0), author="bob", comment="nightly batch is noisy",
                                       now=berlin(1, 0), active_during=["nights"], intervals=intervals)
        by_day = new_incident(conn, service="batch", severity="P3")
        at_night = new_incident(conn, service="batch", severity="P3")
        other = new_incident(conn, service="orders", severity="P3")
        escalate(conn, by_day, now=berlin(5, 12))
        escalate(conn, at_night, now=berlin(5, 23))
        escalate(conn, other, now=berlin(5, 23))
    esc.sweep(berlin(5, 12))
    assert paged(endpoints) == [by_day], "by day the silence is not in force"
    esc.sweep(berlin(5, 23))
    assert sorted(paged(endpoints)[1:]) == [other], "at 23:00 only the unsilenced incident pages"
    with db.transaction() as conn:   # the commander's gate: parked at night, not by day
        fresh = store.get_incident(conn, new_incident(conn, service="batch"))
        assert not escalation.gate_before_assess(conn, gates, fresh, worker="commander", now=berlin(5, 21, 59))
        assert escalation.gate_before_assess(conn, gates, fresh, worker="commander", now=berlin(5, 23, 30))
    assert any(w.startswith(f"silenced by {nightly.id}") for w in timeline_whats(db, at_night))
    esc.sweep(berlin(6, 3))
    assert at_night not in paged(endpoints)
    report = esc.sweep(berlin(6, 6))   # 06:00 Berlin: the night is over, the silence is not
    assert at_night in paged(endpoints)
    assert (fresh.id, "assess") in report.resume
    assert any("is outside its time intervals (nights)" in w for w in timeline_whats(db, at_night))
    with db.transaction() as conn:
        assert silences.get_silence(conn, nightly.id).state(berlin(6, 12), intervals).value == "pending"
        assert silences.get_silence(conn, nightly.id).state(berlin(6, 23), intervals).value == "active"


def test_a_route_muted_during_the_nights_pages_in_the_morning(db, endpoints, redis_client):
    config = section(endpoints, policies={"P3": {"mute_during": ["nights"],
                                                 "levels": [{"channels": ["page"]}]}})
    esc = make_escalator(db, config, redis=redis_client)
    with db.transaction() as conn:
        p3 = new_incident(conn, service="reports", severity="P3")
        p1 = new_incident(conn, service="orders", severity="P1")
        escalate(conn, p3, now=berlin(5, 23))
        escalate(conn, p1, now=berlin(5, 23))
    esc.sweep(berlin(5, 23))
    esc.sweep(berlin(6, 5, 59))
    assert set(paged(endpoints)) == {p1}, "the P1 route has no mute"
    assert any(w.startswith("muted during time interval nights") for w in timeline_whats(db, p3))
    esc.sweep(berlin(6, 6))
    assert paged(endpoints)[-1] == p3 and paged(endpoints).count(p3) == 1


def test_a_silence_about_to_end_leaves_a_reminder_once_and_long_ones_are_refused(db, endpoints, redis_client):
    config = section(endpoints, silences={"remind_before": "15m", "max_duration": "7d"})
    esc = make_escalator(db, config, redis=redis_client)
    t0 = berlin(5, 12)
    with db.transaction() as conn:
        s = silences.add_silence(conn, silences.parse_matchers(["service=batch"]), starts_at=t0,
                                 ends_at=t0 + timedelta(hours=1), author="bob", comment="deploy", now=t0)
        iid = new_incident(conn, service="batch")
        escalate(conn, iid, now=t0)
        with pytest.raises(silences.SilenceError, match="at most 7d"):
            silences.add_silence(conn, silences.parse_matchers(["service=batch"]), starts_at=t0,
                                 ends_at=t0 + timedelta(days=8), author="bob", comment="x", now=t0,
                                 max_duration=esc.config.silences.max_duration)
        with pytest.raises(silences.SilenceError, match=r"undefined time interval\(s\) \['weekends'\]"):
            silences.add_silence(conn, silences.parse_matchers(["service=batch"]), starts_at=t0,
                                 ends_at=t0 + timedelta(hours=1), author="bob", comment="x", now=t0,
                                 active_during=["weekends"], intervals=esc.config.time_intervals)
    assert esc.sweep(t0).reminders == 0
    assert esc.sweep(t0 + timedelta(minutes=46)).reminders == 1
    assert esc.sweep(t0 + timedelta(minutes=50)).reminders == 0
    notes = [w for w in timeline_whats(db, iid) if w.startswith("reminder:")]
    assert len(notes) == 1 and s.id in notes[0] and "in 14 min" in notes[0]


def test_the_api_refuses_a_silence_over_the_maximum_and_adds_a_recurring_one(fresh_database_url, redis_server):
    from fastapi.testclient import TestClient

    from erdu_tasks.api.app import create_app
    from erdu_tasks.settings import load_settings

    settings = load_settings(database_url=fresh_database_url, redis_url=redis_server.url,
                             escalation={"time_intervals": {"nights": NIGHTS}, "silences": {"max_duration": "7d"}})
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/silences", json={"matchers": ["service=batch"], "comment": "x", "duration": "8d"})
        assert r.status_code == 400 and "at most 7d (escalation.silences.max_duration)" in r.json()["detail"]
        r = client.post("/v1/silences", json={"matchers": ["service=batch"], "comment": "x", "duration": "1d",
                                              "active_during": ["weekends"]})
        assert r.status_code == 400 and "undefined time interval" in r.json()["detail"]
        r = client.post("/v1/silences", json={"matchers": ["service=batch"], "comment": "nightly", "duration": "7d",
                                              "active_during": ["nights"]})
        assert r.status_code == 201 and r.json()["active_during"] == ["nights"]
        assert client.get("/v1/silences").json()[0]["active_during"] == ["nights"]
