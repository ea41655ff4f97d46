"""The silences API (erdu_tasks/api/routes_silences.py) against a real database, through the real API app."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from erdu_tasks.api import routes_silences
from erdu_tasks.api.app import create_app
from erdu_tasks.settings import load_settings


@pytest.fixture()
def client(fresh_database_url, redis_server):
    settings = load_settings(database_url=fresh_database_url, redis_url=redis_server.url,
                             api_token="write-token-for-tests", api_read_token="read-token-for-tests")
    app = create_app(settings)
    if not any(getattr(r, "path", "") == "/v1/silences" for r in app.routes):
        app.include_router(routes_silences.router)
    with TestClient(app) as test_client:
        yield test_client


WRITE = {"Authorization": "Bearer write-token-for-tests"}
READ = {"Authorization": "Bearer read-token-for-tests"}


def test_silences_are_added_listed_and_expired_over_http(client):
    r = client.post("/v1/silences", headers=WRITE, json={"matchers": ["service=orders-db", "label.env=prod"],
                                                          "comment": "failover drill", "by": "carol",
                                                          "duration": "2h"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["state"] == "active" and created["author"] == "carol"
    assert created["matchers"] == [{"name": "service", "op": "=", "value": "orders-db"},
                                   {"name": "label.env", "op": "=", "value": "prod"}]
    window = client.post("/v1/silences", headers=WRITE, json={
        "matchers": ["tag=database"], "comment": "upgrade", "starts_at": "2099-01-01T22:00:00Z",
        "ends_at": "2099-01-02T02:00:00Z"}).json()
    assert window["state"] == "pending"
    listed = client.get("/v1/silences", headers=READ).json()
    assert {s["id"] for s in listed} == {created["id"], window["id"]}

    assert client.delete(f"/v1/silences/{created['id']}", headers=READ).status_code == 403
    gone = client.delete(f"/v1/silences/{created['id']}?by=carol", headers=WRITE)
    assert gone.status_code == 200 and gone.json()["state"] == "expired"
    assert client.delete(f"/v1/silences/{created['id']}", headers=WRITE).status_code == 409
    assert client.delete("/v1/silences/SIL-000000000000", headers=WRITE).status_code == 404
    assert [s["id"] for s in client.get("/v1/silences", headers=READ).json()] == [window["id"]]
    assert len(client.get("/v1/silences?all=true", headers=READ).json()) == 2


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"matchers": ["host=web1"], "comment": "x", "duration": "1h"}, 400, "unknown matcher name"),
    ({"matchers": ["tag=~(a"], "comment": "x", "duration": "1h"}, 400, "bad regex"),
    ({"matchers": ["service=a"], "comment": "x", "duration": "soon"}, 400, "duration"),
    ({"matchers": ["service=a"], "comment": "x", "ends_at": "2000-01-01T00:00:00Z"}, 400, "ends"),
    ({"matchers": ["service=a"], "comment": "x"}, 422, "exactly one of ends_at and duration"),
    ({"matchers": [], "comment": "x", "duration": "1h"}, 422, "at least 1"),
])
def test_a_bad_silence_is_refused_with_the_reason_and_nothing_is_stored(client, body, status, message):
    r = client.post("/v1/silences", headers=WRITE, json=body)
    assert r.status_code == status and message in r.text, r.text
    assert client.get("/v1/silences?all=true", headers=READ).json() == []
