"""Alertmanager and PagerDuty through a running API, a resolver worker, and outages of Redis and Postgres."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.conftest import RedisServer, create_database, drop_database, drop_database_later, incident_rows, wait_for
from tests.integration.test_api import WRITE, ApiServer

# The module shares one stack (or server) between its tests: pytest-xdist keeps them on one worker.
pytestmark = pytest.mark.xdist_group("api-sources-stack")


@pytest.fixture(scope="module")
def module_live(module_stack_factory):
    """A stack with a resolver worker (so resolved incidents are closed with a report) and an API on it,
    shared by this module's tests."""
    stack = module_stack_factory()
    stack.start("resolver")
    api = ApiServer(stack.tmp / "api", stack.redis_url, stack.database_url, {"ERDU_API_TOKEN": WRITE,
                                                                           "ERDU_REPORTS_DIR": str(stack.reports)})
    api.tmp.mkdir()
    api.start()
    yield stack, api
    api.stop()


@pytest.fixture()
def live(module_live):
    """The module's stack and API, emptied before the test: its resolver queue drained, no rows, no keys."""
    stack, api = module_live
    stack.clear(settled=None, queues=("resolver",))
    return stack, api


def notification(status: str, *alerts: dict) -> dict:
    return {"version": "4", "status": status, "receiver": "erdu", "groupKey": '{}:{alertname="HighErrorRate"}',
            "truncatedAlerts": 0, "groupLabels": {"alertname": "HighErrorRate"}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://alertmanager:9093", "alerts": list(alerts)}


def alert(status: str, fingerprint: str, instance: str, starts: str, ends: str = "0001-01-01T00:00:00Z") -> dict:
    return {"status": status, "fingerprint": fingerprint, "startsAt": starts, "endsAt": ends,
            "generatorURL": "http://prometheus:9090/graph?g0.expr=rate",
            "labels": {"alertname": "HighErrorRate", "severity": "critical", "job": "checkout", "instance": instance},
            "annotations": {"summary": f"5xx rate above 5% on {instance}", "runbook_url": "http://wiki/5xx"}}


def state(stack, sql="SELECT id, status, occurrences, labels, error_details, resolved_by, acknowledged_at,"
                     " resolved_at, reopened_from FROM incidents ORDER BY created_at, id"):
    return incident_rows(stack.database_url, sql)


def timeline_size(stack) -> int:
    return incident_rows(stack.database_url, "SELECT count(*) AS n FROM incident_timeline")[0]["n"]


def test_alertmanager_firing_then_resolved_opens_and_resolves_one_incident_per_alert(live):
    stack, api = live
    a1 = alert("firing", "a1b2c3d4e5f60001", "web-1:9100", "2024-05-01T10:00:00Z")
    a2 = alert("firing", "a1b2c3d4e5f60002", "web-2:9100", "2024-05-01T10:00:05Z")
    with api.client() as c:
        r = c.post("/v1/alertmanager", json=notification("firing", a1, a2))
        assert r.status_code == 200, r.text
        assert sorted(x["outcome"] for x in r.json()["alerts"]) == ["opened", "opened"]
        opened = state(stack)
        assert len(opened) == 2, "the group key must not merge two alerts"
        first = next(i for i in opened if i["labels"]["instance"] == "web-1:9100")
        assert first["labels"]["alertname"] == "HighErrorRate"
        assert first["error_details"]["details"]["annotations"]["runbook_url"] == "http://wiki/5xx"

        # Alertmanager delivers at least once: the same notification again changes nothing.
        lines = timeline_size(stack)
        again = c.post("/v1/alertmanager", json=notification("firing", a1, a2))
        assert again.status_code == 200
        assert sorted(x["outcome"] for x in again.json()["alerts"]) == ["duplicate", "duplicate"]
        assert state(stack) == opened and timeline_size(stack) == lines

        resolved = {**a1, "status": "resolved", "endsAt": "2024-05-01T10:07:00Z"}
        r = c.post("/v1/alertmanager", json=notification("resolved", resolved))
        assert r.json()["alerts"] == [{"fingerprint": "a1b2c3d4e5f60001", "status": "resolved",
                                       "outcome": "resolved", "incident_id": first["id"]}]
        wait_for(lambda: state(stack, f"SELECT status FROM incidents WHERE id = '{first['id']}'")[0]["status"]
                 == "closed", 60, what="resolver closes the incident")
        row = next(i for i in state(stack) if i["id"] == first["id"])
        assert row["resolved_by"] == "source:alertmanager" and row["resolved_at"] is not None
        assert (stack.reports / f"{first['id']}.md").is_file()
        other = next(i for i in state(stack) if i["id"] != first["id"])
        assert other["status"] == "detected", "resolving one alert must leave the other open"

        # The resolved notification again: nothing more happens.
        lines = timeline_size(stack)
        r = c.post("/v1/alertmanager", json=notification("resolved", resolved))
        assert r.json()["alerts"][0]["outcome"] == "not_open" and timeline_size(stack) == lines
        # A late retry of the original firing notification does not reopen it.
        r = c.post("/v1/alertmanager", json=notification("firing", a1))
        assert r.json()["alerts"][0]["outcome"] == "duplicate" and len(state(stack)) == 2

        # The alert fires again later (a new startsAt): a new incident, linked to the old one.
        refire = alert("firing", "a1b2c3d4e5f60001", "web-1:9100", "2024-05-01T11:00:00Z")
        r = c.post("/v1/alertmanager", json=notification("firing", refire))
        assert r.json()["alerts"][0]["outcome"] == "opened"
        newest = [i for i in state(stack) if i["id"] not in (first["id"], other["id"])]
        assert len(newest) == 1 and newest[0]["reopened_from"] == first["id"]


def test_alertmanager_refuses_a_payload_of_another_version_or_without_alerts(live):
    _, api = live
    with api.client() as c:
        assert c.post("/v1/alertmanager", json={**notification("firing"), "version": "3"}).status_code == 422
        assert c.post("/v1/alertmanager", json={"version": "4"}).status_code == 422
        bad = alert("firing", "f", "x", "not a time")
        assert c.post("/v1/alertmanager", json=notification("firing", bad)).status_code == 422


def pd(action: str, key: str | None = None, **payload) -> dict:
    event = {"routing_key": "R0UT1NGKEY0000000000000000000000", "event_action": action}
    if key:
        event["dedup_key"] = key
    if action == "trigger":
        event["payload"] = {"summary": "Checkout database unreachable", "source": "db-7.prod", "severity": "critical",
                            "component": "postgres", "group": "checkout", "class": "connectivity",
                            "custom_details": {"errors": 42}, **payload}
    return event


def test_pagerduty_trigger_ack_resolve_with_one_dedup_key_then_a_new_trigger_opens_anew(live):
    stack, api = live
    with api.client() as c:
        r = c.post("/v1/pagerduty", json=pd("trigger", "checkout-db"))
        assert r.status_code == 202
        assert r.json() == {"status": "success", "message": "Event processed", "dedup_key": "checkout-db"}
        assert c.post("/v1/pagerduty", json=pd("trigger", "checkout-db")).status_code == 202
        (incident,) = state(stack)
        assert incident["occurrences"] == 2 and incident["labels"] == {"component": "postgres", "group": "checkout",
                                                                       "class": "connectivity"}
        sev = state(stack, "SELECT severity, host, service FROM incidents")[0]
        assert sev == {"severity": "P1", "host": "db-7.prod", "service": "postgres"}

        assert c.post("/v1/pagerduty", json=pd("acknowledge", "checkout-db")).status_code == 202
        assert state(stack)[0]["acknowledged_at"] is not None
        assert c.post("/v1/pagerduty", json=pd("resolve", "checkout-db")).json()["dedup_key"] == "checkout-db"
        wait_for(lambda: state(stack)[0]["resolved_at"] is not None, 10, what="resolved")
        wait_for(lambda: state(stack, "SELECT status FROM incidents")[0]["status"] == "closed", 60, what="closed")
        done = state(stack)[0]
        assert done["acknowledged_at"] is not None and done["resolved_by"] == "source:pagerduty"

        # A trigger after the resolve opens a new incident.
        assert c.post("/v1/pagerduty", json=pd("trigger", "checkout-db")).status_code == 202
        incidents = state(stack)
        assert len(incidents) == 2 and incidents[1]["id"] != incident["id"]


def test_pagerduty_ack_or_resolve_for_an_unknown_key_is_answered_and_ignored(live):
    stack, api = live
    with api.client() as c:
        for action in ("acknowledge", "resolve"):
            r = c.post("/v1/pagerduty", json=pd(action, "never-seen"))
            assert r.status_code == 202 and r.json()["dedup_key"] == "never-seen"
    assert state(stack) == []


def test_pagerduty_makes_up_a_dedup_key_for_a_trigger_without_one(live):
    stack, api = live
    with api.client() as c:
        key = c.post("/v1/pagerduty", json=pd("trigger")).json()["dedup_key"]
        assert len(key) == 32
        assert c.post("/v1/pagerduty", json=pd("resolve", key)).status_code == 202
    wait_for(lambda: state(stack, "SELECT status FROM incidents")[0]["status"] in ("resolved", "closed"), 10,
             what="resolved by the generated key")


@pytest.mark.parametrize("event, says", [
    ({"routing_key": "k", "event_action": "trigger"}, "payload: Field required"),
    ({"routing_key": "k", "event_action": "resolve"}, "dedup_key: Field required"),
    ({"routing_key": "k", "event_action": "explode", "dedup_key": "x"}, "event_action"),
    ({"event_action": "trigger", "payload": {"summary": "s", "source": "h", "severity": "critical"}}, "routing_key"),
    ({"routing_key": "k", "event_action": "trigger", "payload": {"summary": "s", "source": "h",
                                                                  "severity": "urgent"}}, "payload.severity"),
    ({"routing_key": "k", "event_action": "trigger", "payload": {"summary": "  ", "source": "h",
                                                                  "severity": "info"}}, "payload.summary"),
    ({"routing_key": "k", "event_action": "trigger", "payload": {"summary": "x" * 1025, "source": "h",
                                                                  "severity": "info"}}, "payload.summary"),
])
def test_pagerduty_answers_an_invalid_event_with_400_like_pagerduty(live, event, says):
    stack, api = live
    with api.client() as c:
        r = c.post("/v1/pagerduty", json=event)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["status"] == "invalid event" and body["message"] == "Event object is invalid"
    assert any(says in e for e in body["errors"]), body
    assert state(stack) == []


# ---- outages ---------------------------------------------------------------------------------

def test_with_redis_down_nothing_is_accepted_and_the_api_says_so(tmp_path):
    redis = RedisServer(tmp_path)
    url = create_database()
    from erdu_tasks.store.migrate import migrate

    migrate(url)
    api = ApiServer(tmp_path, redis.url, url).start()
    try:
        with api.client(None) as c:
            assert c.post("/v1/events", json={"message": "before the outage"}).status_code == 200
            redis.stop()
            for params in ({}, {"mode": "queue"}):
                r = c.post("/v1/events", params=params, json={"message": "during the outage", "service": "o"})
                assert r.status_code == 503, r.text
                assert "Redis" in r.json()["detail"] and r.headers["retry-after"]
            firing = alert("firing", "ff01", "h", "2024-01-01T00:00:00Z")
            r = c.post("/v1/alertmanager", json=notification("firing", firing))
            assert r.status_code == 503
            assert c.post("/v1/pagerduty", json=pd("trigger", "outage")).status_code == 503
            health = c.get("/healthz")
            assert health.status_code == 503 and health.json()["postgres"] == "ok" and "Redis" in health.json()["redis"]
            assert [r["description"] for r in incident_rows(url, "SELECT description FROM incidents")] == [
                "before the outage"]
            redis.start()
            wait_for(lambda: c.get("/healthz").status_code == 200, 30, what="healthy again")
            assert c.post("/v1/events", json={"message": "after the outage"}).status_code == 200
    finally:
        api.stop()
        redis.stop()
        drop_database_later(url)
    assert "internal error" not in api.log_text()


def test_with_postgres_gone_the_api_answers_503(tmp_path, redis_server):
    url = create_database()
    from erdu_tasks.store.migrate import migrate

    migrate(url)
    api = ApiServer(tmp_path, redis_server.url.replace("/0", "/9"), url).start()
    try:
        with api.client(None) as c:
            assert c.get("/v1/incidents").status_code == 200
            drop_database(url)
            r = c.post("/v1/events", json={"message": "database is gone"})
            assert r.status_code == 503, r.text
            assert "database" in r.json()["detail"]
            assert c.get("/v1/incidents").status_code == 503
            health = c.get("/healthz")
            assert health.status_code == 503 and health.json()["redis"] == "ok"
    finally:
        api.stop()
        drop_database_later(url)
    assert "internal error" not in api.log_text()


# ---- where it may listen ---------------------------------------------------------------------

def _api_exit(env_extra: dict[str, str], host: str, tmp_path, redis_server,
              database_url) -> subprocess.CompletedProcess:
    api = ApiServer(tmp_path, redis_server.url, database_url, env_extra, host=host)
    return subprocess.run([sys.executable, "-m", "erdu_tasks.cli", "api", "--host", host, "--port", str(api.port)],
                          env=api.env, capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_without_a_token_the_api_refuses_to_listen_beyond_localhost(tmp_path, redis_server, database_url):
    done = _api_exit({}, "0.0.0.0", tmp_path, redis_server, database_url)
    assert done.returncode == 2 and "refusing to listen on 0.0.0.0 without a token" in done.stderr
    done = _api_exit({"ERDU_API_READ_TOKEN": "r"}, "127.0.0.1", tmp_path, redis_server, database_url)
    assert done.returncode == 2 and "ERDU_API_TOKEN is not" in done.stderr


def test_with_a_token_it_listens_on_every_interface(tmp_path, redis_server, database_url):
    api = ApiServer(tmp_path, redis_server.url, database_url, {"ERDU_API_TOKEN": WRITE}, host="0.0.0.0").start()
    try:
        assert httpx.get(api.url + "/v1/incidents").status_code == 401
    finally:
        api.stop()
