"""The HTTP API against a running `erdu api` process, a private Redis and a private database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import RedisServer, create_database, drop_database_later, free_port, incident_rows, wait_for

# The module shares one stack (or server) between its tests: pytest-xdist keeps them on one worker.
pytestmark = pytest.mark.xdist_group("api-server")

WRITE = "write-token-1"
READ = "read-token-2"


class ApiServer:
    """`python -m erdu_tasks.cli api` on a free port, stopped at the end."""

    def __init__(self, tmp: Path, redis_url: str, database_url: str, env: dict[str, str] | None = None,
                 host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.host = host
        self.tmp = tmp
        self.redis_url = redis_url
        self.database_url = database_url
        self.env = {**os.environ, "ERDU_REDIS_URL": redis_url, "ERDU_DATABASE_URL": database_url,
                    "ERDU_REPORTS_DIR": str(tmp / "reports"), "ERDU_ALERTS_DIR": str(tmp / "alerts"),
                    "ERDU_STATE_DIR": str(tmp / "var"), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.env.pop("ERDU_CONFIG", None)
        for key in ("ERDU_API_TOKEN", "ERDU_API_READ_TOKEN"):
            if env is None or key not in env:
                self.env.pop(key, None)
        self.log_path = tmp / f"api-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> "ApiServer":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "erdu_tasks.cli", "api", "--host", self.host, "--port", str(self.port),
             "--log-level", "warning"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp, start_new_session=True)
        if wait:
            wait_for(self._up, 60, 0.2, what="API listening")
        return self

    def _up(self) -> bool:
        assert self.proc and self.proc.poll() is None, "API exited: " + self.log_text()[-3000:]
        try:
            return httpx.get(self.url + "/openapi.json", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def client(self, token: str | None = WRITE) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def write_client(api: ApiServer) -> httpx.Client:
    return api.client(WRITE)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """One API with both tokens, on its own Redis and database, shared by this module's tests."""
    tmp = tmp_path_factory.mktemp("api")
    redis = RedisServer(tmp)
    url = create_database()
    from erdu_tasks.store.migrate import migrate

    migrate(url)
    server = ApiServer(tmp, redis.url, url, {"ERDU_API_TOKEN": WRITE, "ERDU_API_READ_TOKEN": READ}).start()
    yield server
    server.stop()
    redis.stop()
    drop_database_later(url)


@pytest.fixture()
def w(api):
    with api.client(WRITE) as c:
        yield c


def rows(api, sql, params=()):
    return incident_rows(api.database_url, sql, params)


def count_incidents(api) -> int:
    return rows(api, "SELECT count(*) AS n FROM incidents")[0]["n"]


# ---- /v1/events -----------------------------------------------------------------------------

def test_one_event_opens_an_incident_and_answers_its_id_as_new(api, w):
    r = w.post("/v1/events", json={"message": "Disk full on /var/lib/pg", "service": "db-events-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["incidents"]) == 1 and body["incidents"][0]["new"] is True and body["handed_off"] is True
    incident_id = body["incidents"][0]["id"]
    stored = rows(api, "SELECT service, status, occurrences FROM incidents WHERE id = %s", (incident_id,))
    assert stored == [{"service": "db-events-1", "status": "detected", "occurrences": 1}]
    # The commander's hand-off is on its queue.
    import redis

    queued = redis.Redis.from_url(api.redis_url).lrange("commander", 0, -1)
    assert _assess_body_mentions(queued, incident_id)


def test_why_and_a_merge_over_http(api, w):
    a = w.post("/v1/events", json={"message": "ERROR ledger sync stalled at batch 41", "service": "why-1"}).json()
    b = w.post("/v1/events", json={"message": "ERROR ledger sync aborted", "service": "why-1"}).json()
    a_id, b_id = a["incidents"][0]["id"], b["incidents"][0]["id"]
    why = w.get(f"/v1/incidents/{a_id}/why").json()
    assert why["template"] == "ERROR ledger sync stalled at batch <*>"
    assert why["masked"] == [{"text": "41", "rules": ["token with a digit"]}]
    assert w.get("/v1/incidents/INC-19990101000000-nothere/why").status_code == 404
    merged = w.post("/v1/grouping/merge", json={"source": a_id, "target": b_id, "by": "dana"})
    assert merged.status_code == 200 and b_id in merged.json()["message"]
    assert w.post("/v1/grouping/merge", json={"source": a_id, "target": b_id}).status_code == 409
    again = w.post("/v1/events", json={"message": "ERROR ledger sync stalled at batch 42", "service": "why-1"}).json()
    assert again["incidents"][0]["id"] == b_id
    with api.client(READ) as r:
        assert r.post("/v1/grouping/split", json={"fingerprint": b_id, "slot": 1}).status_code == 403
        assert any(o["kind"] == "merge" for o in r.get("/v1/grouping").json())


def _assess_body_mentions(messages, incident_id: str) -> bool:
    import base64

    for m in messages:
        msg = json.loads(m)
        if msg["headers"]["task"] == "erdu.assess" and incident_id in base64.b64decode(msg["body"]).decode():
            return True
    return False


def test_the_same_event_again_is_a_repeat_of_the_same_incident(api, w):
    event = {"message": "Cache miss storm on shard 4", "service": "cache-repeat"}
    first = w.post("/v1/events", json=event).json()["incidents"][0]
    second = w.post("/v1/events", json=event).json()["incidents"][0]
    assert second["id"] == first["id"] and second["new"] is False and second["occurrences"] == 2


def test_a_batch_is_folded_by_fingerprint_and_answers_each_incident(api, w):
    batch = [{"message": f"Timeout calling payments after {n} ms", "service": "batch-svc"} for n in (100, 200, 300)]
    batch.append({"message": "Segfault in worker", "service": "batch-svc", "count": 5})
    r = w.post("/v1/events", json=batch)
    assert r.status_code == 200, r.text
    got = sorted((i["count"], i["new"]) for i in r.json()["incidents"])
    assert got == [(3, True), (5, True)]


def test_mode_queue_puts_the_events_on_the_ingest_queue_and_answers_202(api, w):
    import redis

    r = w.post("/v1/events", params={"mode": "queue"}, json={"message": "queued event", "service": "q"})
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    ingest = redis.Redis.from_url(api.redis_url).lrange("ingest", 0, -1)
    assert any(json.loads(m)["headers"]["id"] == task_id for m in ingest)


# ---- auth -----------------------------------------------------------------------------------

@pytest.mark.parametrize("token, method, path, expected", [
    (None, "GET", "/v1/incidents", 401),
    ("nope", "GET", "/v1/incidents", 401),
    (READ, "GET", "/v1/incidents", 200),
    (WRITE, "GET", "/v1/incidents", 200),
    (None, "POST", "/v1/events", 401),
    ("nope", "POST", "/v1/events", 401),
    (READ, "POST", "/v1/events", 403),
    (WRITE, "POST", "/v1/events", 200),
    (READ, "POST", "/v1/alertmanager", 403),
    (None, "POST", "/v1/incidents/INC-x/ack", 401),
    (READ, "POST", "/v1/incidents/INC-x/ack", 403),
    (None, "GET", "/healthz", 200),
    (None, "GET", "/openapi.json", 200),
])
def test_tokens_decide_who_may_read_and_write(api, token, method, path, expected):
    body = {"message": "auth check event", "service": "auth"} if path == "/v1/events" else None
    if path == "/v1/alertmanager":
        body = {"version": "4", "alerts": []}
    with api.client(token) as c:
        r = c.request(method, path, json=body)
    assert r.status_code == expected, r.text
    if expected == 401:
        assert r.headers["www-authenticate"] == "Bearer"


def test_a_refused_write_stores_nothing(api):
    before = count_incidents(api)
    with api.client(READ) as c:
        assert c.post("/v1/events", json={"message": "should not be stored"}).status_code == 403
    assert count_incidents(api) == before


def test_pagerduty_senders_may_use_the_write_token_as_routing_key(api):
    event = {"routing_key": WRITE, "event_action": "trigger", "dedup_key": "rk-auth",
             "payload": {"summary": "routing key auth", "source": "host1", "severity": "warning"}}
    with api.client(None) as c:
        assert c.post("/v1/pagerduty", json=event).status_code == 202
        assert c.post("/v1/pagerduty", json={**event, "routing_key": "wrong"}).status_code == 401


# ---- malformed bodies -------------------------------------------------------------------------

@pytest.mark.parametrize("content, expected, says", [
    (b'{"message": "ok", "count": "many"}', 422, "count"),
    (b'{"message": 12}', 422, "message"),
    (b'{"service": "no message"}', 422, "message"),
    (b'{"message": "x", "unknown_field": 1}', 422, "unknown_field"),
    (b'[]', 422, "at least 1"),
    (b'"just a string"', 422, ""),
    (b'{"message": "x", "labels": {"a": 1}}', 422, "labels"),
    (b'{"message": "x", "severity": "P9"}', 422, "severity"),
    (b'{"message": "x", "occurred_at": "yesterday"}', 422, "occurred_at"),
    (b'{"message": "bad \xff\xfe utf-8"}', 400, "UTF-8"),
    (b'{"message": "nul \\u0000 inside"}', 400, "NUL"),
    (b'{"message": "lone \\ud800 surrogate"}', 400, "surrogate"),
    (b'{"message": "x", "details": {"n": NaN}}', 400, "NaN"),
    (b'{"message": "x", "details": {"n": 1e999}}', 400, "out of range"),
    (b'{"message": "x", "count": 1' + b"0" * 5000 + b'}', 400, "JSON"),
    (b'{"message": "x",', 400, "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "nested deeper"),
    (b'{"message": "x", "details": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}", 400, "nested deeper"),
])
def test_a_malformed_body_gets_a_clear_4xx_and_stores_nothing(api, w, content, expected, says):
    before = count_incidents(api)
    r = w.post("/v1/events", content=content, headers={"content-type": "application/json"})
    assert r.status_code == expected, r.text
    assert says.lower() in r.text.lower()
    assert count_incidents(api) == before


def test_a_10_mb_body_is_refused_with_413(api, w):
    before = count_incidents(api)
    big = json.dumps({"message": "x" * (10 * 1024 * 1024)}).encode()
    r = w.post("/v1/events", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert count_incidents(api) == before


def test_a_chunked_body_over_the_limit_is_refused_with_413(api, w):
    def chunks():
        yield b'{"message": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    r = w.post("/v1/events", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text


def test_a_json_body_sent_as_a_form_is_still_read_as_json(api, w):
    r = w.post("/v1/events", content=b'{"message": "sent with curl -d", "service": "curl"}',
               headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text


# ---- incidents --------------------------------------------------------------------------------

def test_incidents_are_listed_filtered_and_paged(api, w):
    for n in range(5):
        w.post("/v1/events", json={"message": f"paging event kind {chr(97 + n)}x", "service": "paging",
                                   "severity": "P4", "dedup_key": f"paging-{n}"})
    page1 = w.get("/v1/incidents", params={"service": "paging", "limit": 2}).json()
    assert len(page1["incidents"]) == 2 and page1["next_offset"] == 2
    page3 = w.get("/v1/incidents", params={"service": "paging", "limit": 2, "offset": 4}).json()
    assert len(page3["incidents"]) == 1 and page3["next_offset"] is None
    everything = w.get("/v1/incidents", params={"service": "paging", "limit": 10}).json()["incidents"]
    ids = [i["id"] for i in page1["incidents"]] + [i["id"] for i in page3["incidents"]]
    assert set(ids) <= {i["id"] for i in everything} and len(everything) == 5
    assert w.get("/v1/incidents", params={"service": "paging", "severity": "P1"}).json()["incidents"] == []
    assert len(w.get("/v1/incidents", params={"service": "paging", "severity": ["P4", "P1"],
                                              "status": "detected"}).json()["incidents"]) == 5
    assert w.get("/v1/incidents", params={"service": "paging", "since": "2999-01-01T00:00:00Z"}).json()[
        "incidents"] == []
    assert w.get("/v1/incidents", params={"status": "sleeping"}).status_code == 422


def test_incidents_are_paged_by_an_opaque_cursor(api, w):
    for n in range(5):
        w.post("/v1/events", json={"message": f"cursor event kind {chr(97 + n)}x", "service": "cursors",
                                   "severity": "P4", "dedup_key": f"cursor-{n}"})
    everything = [i["id"] for i in w.get("/v1/incidents", params={"service": "cursors", "limit": 10}).json()[
        "incidents"]]
    seen, cursor = [], None
    while True:
        page = w.get("/v1/incidents", params={"service": "cursors", "limit": 2,
                                              **({"cursor": cursor} if cursor else {})}).json()
        seen += [i["id"] for i in page["incidents"]]
        cursor = page["next_cursor"]
        assert page["next_offset"] is None or not seen[2:]
        if cursor is None:
            break
    assert seen == everything and len(seen) == 5
    assert w.get("/v1/incidents", params={"cursor": "bm90IGEgY3Vyc29y"}).status_code == 422
    assert w.get("/v1/incidents", params={"cursor": "%%%"}).status_code == 422
    first = w.get("/v1/incidents", params={"service": "cursors", "limit": 2}).json()["next_cursor"]
    assert w.get("/v1/incidents", params={"cursor": first, "offset": 2}).status_code == 422


def test_one_incident_comes_with_its_timeline(api, w):
    incident_id = w.post("/v1/events", json={"message": "Timeline check", "service": "tl"}).json()["incidents"][0]["id"]
    r = w.get(f"/v1/incidents/{incident_id}")
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == incident_id and body["status"] == "detected"
    assert body["timeline"][0]["actor"] == "ingest" and "detected" in body["timeline"][0]["what"]
    assert w.get("/v1/incidents/INC-20000101000000-deadbeef").status_code == 404


def test_ack_and_resolve_act_on_an_incident_and_refuse_what_does_not_fit(api, w):
    incident_id = w.post("/v1/events", json={"message": "Act on me", "service": "act"}).json()["incidents"][0]["id"]
    r = w.post(f"/v1/incidents/{incident_id}/ack", json={"by": "alice"})
    assert r.status_code == 200, r.text
    got = rows(api, "SELECT acknowledged_at FROM incidents WHERE id = %s", (incident_id,))[0]
    assert got["acknowledged_at"] is not None
    assert w.post(f"/v1/incidents/{incident_id}/approve").status_code == 409
    assert w.post(f"/v1/incidents/{incident_id}/retry").status_code == 409
    r = w.post(f"/v1/incidents/{incident_id}/resolve", json={"by": "alice", "note": "restarted it"})
    assert r.status_code == 200, r.text
    got = rows(api, "SELECT status, resolved_by FROM incidents WHERE id = %s", (incident_id,))[0]
    assert got == {"status": "resolved", "resolved_by": "person:alice"}
    assert w.post(f"/v1/incidents/{incident_id}/resolve").status_code == 409
    assert w.post("/v1/incidents/INC-20000101000000-deadbeef/ack").status_code == 404
    assert w.post(f"/v1/incidents/{incident_id}/ack", json={"by": 5}).status_code == 422


def test_approve_resumes_a_fix_waiting_for_approval(api, w):
    incident_id = w.post("/v1/events", json={"message": "Needs a yes", "service": "appr"}).json()["incidents"][0]["id"]
    import psycopg

    with psycopg.connect(api.database_url, autocommit=True) as conn:
        conn.execute("UPDATE incidents SET status = 'awaiting_approval' WHERE id = %s", (incident_id,))
    r = w.post(f"/v1/incidents/{incident_id}/approve", json={"by": "bob"})
    assert r.status_code == 200, r.text
    assert rows(api, "SELECT status FROM incidents WHERE id = %s", (incident_id,))[0]["status"] == "fixing"


def test_retry_re_drives_an_escalated_incident(api, w):
    incident_id = w.post("/v1/events", json={"message": "Retry me", "service": "retry"}).json()["incidents"][0]["id"]
    import psycopg

    with psycopg.connect(api.database_url, autocommit=True) as conn:
        conn.execute("UPDATE incidents SET status = 'escalated' WHERE id = %s", (incident_id,))
        conn.execute("INSERT INTO escalations (incident_id, reason, stage) VALUES (%s, 'boom', 'diagnose')",
                     (incident_id,))
    r = w.post(f"/v1/incidents/{incident_id}/retry")
    assert r.status_code == 200, r.text
    assert rows(api, "SELECT status FROM incidents WHERE id = %s", (incident_id,))[0]["status"] == "assigned"


def test_healthz_says_both_are_reachable(api):
    r = httpx.get(api.url + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "redis": "ok", "postgres": "ok"}


def test_the_openapi_schema_lists_every_endpoint(api):
    paths = httpx.get(api.url + "/openapi.json").json()["paths"]
    for path in ("/v1/events", "/v1/alertmanager", "/v1/pagerduty", "/v1/incidents", "/v1/incidents/{incident_id}",
                 "/v1/incidents/{incident_id}/ack", "/v1/incidents/{incident_id}/resolve",
                 "/v1/incidents/{incident_id}/approve", "/v1/incidents/{incident_id}/retry", "/healthz"):
        assert path in paths, path


def test_no_500_was_logged(api):
    assert "internal error" not in api.log_text() and "Traceback" not in api.log_text(), api.log_text()[-3000:]


def test_metrics_are_served_at_slash_metrics_without_a_redirect(api):
    r = httpx.get(api.url + "/metrics", follow_redirects=False)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert "erdu_backend_up" in r.text
