"""Heartbeats against real Postgres: the check and the ping called with an injected clock, and the HTTP API."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from erdu_tasks import names
from erdu_tasks.api import routes_heartbeats
from erdu_tasks.api.app import create_app
from erdu_tasks.errors import InvalidEvent
from erdu_tasks.ingest.accept import dedup_fingerprint
from erdu_tasks.ingest.formats.event import parse_events
from erdu_tasks.monitors import heartbeats
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings
from erdu_tasks.store import incidents as store
from erdu_tasks.tasks import heartbeats as heartbeat_tasks

T0 = datetime(2025, 6, 2, 12, 0, tzinfo=timezone.utc)
SECTION = {"checks": {"backup": {"period": "60s", "grace": "30s", "service": "backup", "severity": "P2"}},
           "defaults": {"period": "5m", "grace": "1m"}}


@pytest.fixture()
def handed(monkeypatch):
    """What the ping hands on after its commit (recorded instead of published)."""
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(heartbeat_tasks, "hand_on", lambda stage, incident_id, **kw: seen.append((stage, incident_id)))
    return seen


@pytest.fixture()
def rt(fresh_database_url):
    runtime = Runtime(load_settings(database_url=fresh_database_url, heartbeats=SECTION))
    yield runtime
    runtime.db.close()


def incident(rt, incident_id):
    with rt.db.transaction() as conn:
        return store.get_incident(conn, incident_id)


def ping(rt, name, now, **kw):
    with rt.db.transaction() as conn:
        return heartbeats.ping(conn, name, rt.settings.heartbeats, now=now, source="test", **kw)


def check(rt, now, notified=None):
    return heartbeats.check(rt.db, rt.settings.heartbeats, rt, now=now,
                            notify=(notified.append if notified is not None else lambda i: None))


def test_a_late_heartbeat_opens_an_incident_within_its_grace_and_its_return_resolves_it(rt):
    ping(rt, "backup", T0)
    notified: list[str] = []
    assert check(rt, T0 + timedelta(seconds=89), notified) == [], "inside period + grace"
    late = check(rt, T0 + timedelta(seconds=90), notified)
    assert [b["name"] for b in late] == ["backup"] and notified == [late[0]["incident_id"]]
    opened = incident(rt, notified[0])
    assert opened.fingerprint == dedup_fingerprint("heartbeat:backup") and opened.source == "heartbeat"
    assert opened.service == "backup" and opened.title == "Heartbeat backup is late"
    assert "expected every 60 s, 30 s grace" in opened.description
    assert check(rt, T0 + timedelta(seconds=120), notified) == [] and len(notified) == 1, "once per lateness"

    back = ping(rt, "backup", T0 + timedelta(seconds=150))
    assert back.resolved == opened.id and back.heartbeat.state == "up"
    closed = incident(rt, opened.id)
    assert closed.status.value == "resolved" and closed.resolved_by == "heartbeat:backup"
    assert "returned at" in closed.root_cause and "60 s" in closed.root_cause
    # Late again later: a new incident (the old one is resolved).
    again = check(rt, T0 + timedelta(seconds=241), notified)
    assert again and again[0]["incident_id"] != opened.id


def test_a_declared_heartbeat_that_never_pings_is_late_and_unknown_names_follow_create_on_ping(rt,
                                                                                              fresh_database_url):
    check(rt, T0)   # declares `backup` at T0
    assert check(rt, T0 + timedelta(seconds=91))[0]["name"] == "backup"
    made = ping(rt, "cron-report", T0)
    assert made.created and made.heartbeat.period == timedelta(minutes=5) and not made.heartbeat.declared
    assert check(rt, T0 + timedelta(minutes=5, seconds=59)) == []
    assert [b["name"] for b in check(rt, T0 + timedelta(minutes=6))] == ["cron-report"]
    strict = Runtime(load_settings(database_url=fresh_database_url, heartbeats={**SECTION, "create_on_ping": False}))
    try:
        with pytest.raises(heartbeats.UnknownHeartbeat, match="create_on_ping"):
            ping(strict, "somebody-else", T0)
        with pytest.raises(heartbeats.BadHeartbeatName):
            ping(rt, "erdu:beat", T0)
    finally:
        strict.db.close()
    with pytest.raises(InvalidEvent, match="'heartbeat:' is ERDU's own"):
        parse_events({"message": "squat", "dedup_key": "heartbeat:backup"})


def test_a_stopped_beat_raises_an_incident_within_a_minute_and_its_return_resolves_it(rt):
    assert heartbeats.check_beat(rt.db, rt.settings.heartbeats, rt, now=T0) is None, "beat never ran: no row"
    ping(rt, names.BEAT_HEARTBEAT, T0, internal=True)     # what the reconciler's pass writes
    assert heartbeats.check_beat(rt.db, rt.settings.heartbeats, rt, now=T0 + timedelta(seconds=60)) is None
    raised = heartbeats.check_beat(rt.db, rt.settings.heartbeats, rt, now=T0 + timedelta(seconds=61))
    opened = incident(rt, raised)
    assert opened.severity.value == "P1" and opened.title == "Celery beat has stopped"
    assert "the reconciler last ran at" in opened.description
    assert heartbeats.check_beat(rt.db, rt.settings.heartbeats, rt, now=T0 + timedelta(seconds=90)) is None
    assert check(rt, T0 + timedelta(hours=1)) == [], "beat's own heartbeat is the API's to watch"
    back = ping(rt, names.BEAT_HEARTBEAT, T0 + timedelta(seconds=95), internal=True)
    assert back.resolved == raised and incident(rt, raised).status.value == "resolved"


def test_heartbeats_through_the_api(fresh_database_url, redis_server, handed):
    settings = load_settings(database_url=fresh_database_url, redis_url=redis_server.url, heartbeats=SECTION,
                             api_token="write-token-for-tests", api_read_token="read-token-for-tests")
    write = {"Authorization": "Bearer write-token-for-tests"}
    read = {"Authorization": "Bearer read-token-for-tests"}
    with TestClient(create_app(settings)) as client:
        ctx = client.app.state.erdu
        r = client.post("/v1/heartbeats/backup", headers=write)
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "up" and r.json()["created"] and r.json()["declared"]
        assert client.post("/v1/heartbeats/backup", headers=read).status_code == 403
        assert client.post("/v1/heartbeats/bad%20name", headers=write).status_code == 422
        listed = client.get("/v1/heartbeats", headers=read).json()
        assert [(b["name"], b["state"], b["pings"]) for b in listed] == [("backup", "up", 1)]

        late_at = datetime.now(timezone.utc) + timedelta(seconds=91)
        found = heartbeats.check(ctx.rt.db, settings.heartbeats, ctx.rt, now=late_at)
        incident_id = found[0]["incident_id"]
        assert client.get("/v1/heartbeats", headers=read).json()[0]["incident_id"] == incident_id
        r = client.post("/v1/heartbeats/backup", headers=write)
        assert r.json()["resolved"] == incident_id and handed == [("resolve", incident_id)]
        assert client.get(f"/v1/incidents/{incident_id}", headers=read).json()["status"] == "resolved"

        # ERDU's own beat, watched by the API process.
        now = datetime.now(timezone.utc)
        heartbeat_tasks.ping(ctx.rt, names.BEAT_HEARTBEAT, source="reconciler", now=now, internal=True)
        assert routes_heartbeats.watch_beat_once(ctx, now + timedelta(seconds=30)) is None
        raised = routes_heartbeats.watch_beat_once(ctx, now + timedelta(seconds=61))
        assert raised and client.get(f"/v1/incidents/{raised}", headers=read).json()["severity"] == "P1"
        states = {b["name"]: b["state"] for b in client.get("/v1/heartbeats", headers=read).json()}
        assert set(states) == {"backup", names.BEAT_HEARTBEAT}
