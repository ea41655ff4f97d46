"""Every producer path goes through the one ingest entry, so every path links flapping by the configured window.

Each test sets `flap_window_seconds` to 60 s and sends the same thing twice per case: once after
its first incident was resolved 10 minutes ago (outside the window, though inside the old
hard-coded hour: not flapping), once after it was resolved 5 s ago (inside: flapping, linked).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient

from erdu_tasks.api.app import create_app
from erdu_tasks.monitors import http_probe, logtail
from erdu_tasks.monitors.config import load_monitors
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings
from tests.conftest import RedisServer, free_port, incident_rows, wait_for

WINDOW = 60.0
LONG_AGO = 600.0   # outside WINDOW, inside the hour ingest used to fall back to
JUST_NOW = 5.0
TOKEN = "write-token-for-ingest-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """A private redis-server: the API pings it and publishes new incidents to it."""
    server = RedisServer(tmp_path_factory.mktemp("ingest-broker"))
    yield server
    server.stop()


def settings_for(database_url: str, redis_url: str):
    return load_settings(database_url=database_url, redis_url=redis_url, flap_window_seconds=WINDOW,
                         api_token=TOKEN)


@pytest.fixture()
def api(fresh_database_url, broker):
    with TestClient(create_app(settings_for(fresh_database_url, broker.url))) as client:
        yield client, fresh_database_url


def incidents(url: str, tag: str) -> list[dict]:
    return incident_rows(url, "SELECT id, status, reopened_from, tags FROM incidents WHERE description LIKE %s"
                              " ORDER BY created_at, id", (f"%{tag}%",))


def resolve_in_db(url: str, incident_id: str, seconds_ago: float) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE incidents SET status = 'resolved', resolved_at = now() - make_interval(secs => %s)"
                     " WHERE id = %s", (seconds_ago, incident_id))


def recurrence(url: str, send: Callable[[str], None], tag: str, resolved_ago: float) -> tuple[dict, dict]:
    """Send `tag`, resolve its incident `resolved_ago` seconds back, send it again: (first, second)."""
    send(tag)
    [first] = incidents(url, tag)
    resolve_in_db(url, first["id"], resolved_ago)
    send(tag)
    rows = incidents(url, tag)
    assert len(rows) == 2, f"a recurrence after a resolve opens a new incident: {rows}"
    return rows[0], rows[1]


def assert_flap_window_is_the_setting(url: str, send: Callable[[str], None]) -> None:
    _, late = recurrence(url, send, "late-one", LONG_AGO)
    assert late["reopened_from"] is None and "flapping" not in late["tags"], \
        "a recurrence outside flap_window_seconds is not flapping"
    first, soon = recurrence(url, send, "soon-one", JUST_NOW)
    assert soon["reopened_from"] == first["id"] and "flapping" in soon["tags"], \
        "a recurrence inside flap_window_seconds is linked as flapping"


def test_post_v1_events_links_flapping_by_the_configured_window(api):
    client, url = api

    def send(tag: str) -> None:
        r = client.post("/v1/events", headers=AUTH, json={"source": "api", "message": f"ERROR checkout {tag}",
                                                          "service": "checkout", "dedup_key": f"api:{tag}"})
        assert r.status_code == 200, r.text
        assert r.json()["handed_off"] is True

    assert_flap_window_is_the_setting(url, send)


def test_alertmanager_links_flapping_by_the_configured_window(api):
    client, url = api
    starts = iter(datetime(2024, 5, 1, 10, tzinfo=timezone.utc) + timedelta(minutes=n) for n in range(100))

    def send(tag: str) -> None:
        alert = {"status": "firing", "fingerprint": tag, "startsAt": next(starts).isoformat(),
                 "labels": {"alertname": "HighErrorRate", "severity": "critical", "job": "checkout"},
                 "annotations": {"summary": f"5xx rate above 5% ({tag})"}}
        r = client.post("/v1/alertmanager", headers=AUTH, json={"version": "4", "status": "firing",
                                                                 "alerts": [alert]})
        assert r.status_code == 200, r.text
        assert r.json()["alerts"][0]["outcome"] == "opened"

    assert_flap_window_is_the_setting(url, send)


def test_pagerduty_links_flapping_by_the_configured_window(api):
    client, url = api

    def send(tag: str) -> None:
        r = client.post("/v1/pagerduty", headers=AUTH, json={
            "routing_key": "R0UT1NGKEY", "event_action": "trigger", "dedup_key": tag,
            "payload": {"summary": f"Checkout database unreachable ({tag})", "source": "db-7",
                        "severity": "critical"}})
        assert r.status_code == 202, r.text

    assert_flap_window_is_the_setting(url, send)


def test_a_probe_links_flapping_by_the_configured_window(fresh_database_url, broker):
    rt = Runtime(settings_for(fresh_database_url, broker.url))
    url = f"http://127.0.0.1:{free_port()}/health"   # nothing listens: the probe fails at once

    def send(tag: str) -> None:
        cfg = load_monitors({"probes": {"checks": [{"name": tag, "url": url, "failures": 1, "timeout": 1}]}}).probes
        [decision] = http_probe.run_probes(cfg, rt.db, rt, lambda incident_id: None, host="h1",
                                           now=lambda: datetime.now(timezone.utc))
        assert decision.verdict.value == "firing"

    try:
        assert_flap_window_is_the_setting(fresh_database_url, send)
    finally:
        rt.db.close()


def test_the_log_tailer_links_flapping_by_the_configured_window(fresh_database_url, broker, tmp_path):
    rt = Runtime(settings_for(fresh_database_url, broker.url))
    client = redis.Redis.from_url(broker.url)
    path = tmp_path / "app.log"
    path.write_bytes(b"")
    config = load_monitors({"logs": {"files": [{"path": str(path), "service": "orders", "from_start": True}]}}).logs
    deps = logtail.TailDeps(db=rt.db, redis=client, rt=rt, notify=lambda incident_id: None, host="h1")

    def send(tag: str) -> None:
        with open(path, "ab") as out:
            out.write(f"2024-05-01T10:00:00 ERROR order sync failed: {tag}\n".encode())
        logtail._registered.clear()
        [stats] = logtail.scan(config, deps)
        assert stats.events == 1, stats

    try:
        assert_flap_window_is_the_setting(fresh_database_url, send)
    finally:
        rt.db.close()
        client.close()


def test_the_celery_ingest_task_links_flapping_by_the_configured_window(stack_factory):
    stack = stack_factory({"ERDU_FLAP_WINDOW_SECONDS": str(WINDOW)})
    stack.start("ingest")
    url = stack.database_url

    def send(tag: str) -> None:
        before = len(incidents(url, tag))
        stack.send_event({"source": "celery", "message": f"ERROR checkout {tag}", "dedup_key": f"celery-task-{tag}"})
        wait_for(lambda: len(incidents(url, tag)) > before, 60, what=f"the ingest worker stores {tag}")

    assert_flap_window_is_the_setting(url, send)

