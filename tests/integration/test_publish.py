"""The publish-after-commit helper (tasks/publish.py): a refused publish leaves the work committed and raises nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
import redis
from fastapi.testclient import TestClient

from erdu_tasks.api.app import create_app
from erdu_tasks.app import make_celery
from erdu_tasks.settings import load_settings
from erdu_tasks.tasks.publish import hand_on
from tests.conftest import RedisServer, free_port, incident_rows

TOKEN = "write-token-for-publish-tests"


def closed_port_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def celery_on(url: str):
    return make_celery(load_settings(redis_url=url))


def queued(url: str, queue: str) -> list[dict]:
    client = redis.Redis.from_url(url)
    try:
        return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]
    finally:
        client.close()


@pytest.fixture()
def broker(tmp_path):
    server = RedisServer(tmp_path / "broker")
    yield server
    server.stop()


def test_hand_on_publishes_each_incident_on_the_stage_queue(broker):
    app = celery_on(broker.url)
    assert hand_on("assess", ["INC-20250101000000-00000001", "INC-20250101000000-00000002"], app=app) is True
    assert hand_on("fix", "INC-20250101000000-00000003", app=app) is True
    assessed = queued(broker.url, "commander")
    assert sorted(m["headers"]["task"] for m in assessed) == ["erdu.assess", "erdu.assess"]
    assert sorted(m["headers"]["argsrepr"] for m in assessed) == ["('INC-20250101000000-00000001',)",
                                                                   "('INC-20250101000000-00000002',)"]
    [fix] = queued(broker.url, "fixer")
    assert fix["headers"]["task"] == "erdu.fix"
    app.close()


def test_hand_on_returns_false_without_raising_when_the_broker_was_stopped(broker):
    app = celery_on(broker.url)
    assert hand_on("assess", "INC-20250101000000-00000001", app=app) is True
    broker.stop()
    started = time.monotonic()
    assert hand_on("assess", ["INC-20250101000000-00000002", "INC-20250101000000-00000003"], app=app) is False
    assert time.monotonic() - started < 10, "a refused publish is given up quickly, not retried for long"
    app.close()


def test_hand_on_returns_false_without_raising_against_a_closed_port():
    app = celery_on(closed_port_url())
    assert hand_on("resolve", ["INC-20250101000000-00000001"], app=app) is False
    assert hand_on("resolve", [], app=app) is True
    app.close()


def test_post_v1_events_stores_and_answers_when_the_publish_is_refused(fresh_database_url, broker):
    settings = load_settings(database_url=fresh_database_url, redis_url=broker.url, api_token=TOKEN)
    api = create_app(settings)
    # The ping client still reaches the broker, the publisher does not: the moment between the two.
    api.state.erdu.celery = celery_on(closed_port_url())
    with TestClient(api) as client:
        r = client.post("/v1/events", headers={"Authorization": f"Bearer {TOKEN}"},
                        json={"source": "api", "message": "ERROR checkout failed", "service": "checkout"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["handed_off"] is False and body["incidents"][0]["new"] is True
    [row] = incident_rows(fresh_database_url, "SELECT id, status FROM incidents")
    assert row == {"id": body["incidents"][0]["id"], "status": "detected"}, "the reconciler finds it owed assess"
    assert queued(broker.url, "commander") == []


SCRIPT = textwrap.dedent("""
    import json
    from erdu_tasks.app import runtime
    from erdu_tasks.tasks import people
    from erdu_tasks.tasks.ingest import ingest

    result = ingest([{"source": "celery", "message": "ERROR checkout failed", "dedup_key": "publish:a"},
                     {"source": "celery", "message": "ERROR payment failed", "dedup_key": "publish:b"}])
    print("RESULT " + json.dumps(result))
    done = people.resolve(runtime(), result["incidents"][0]["id"], "carol")
    print("RESOLVED " + done.incident_id)
""")


def test_the_ingest_task_and_a_person_s_resolve_commit_and_return_when_the_broker_is_unreachable(
        fresh_database_url, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "ERDU_DATABASE_URL": fresh_database_url, "ERDU_REDIS_URL": closed_port_url(),
           "ERDU_REPORTS_DIR": str(tmp_path / "reports"), "ERDU_STATE_DIR": str(tmp_path / "var")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    ids = [i["id"] for i in result["incidents"]]
    assert len(ids) == 2 and all(i["new"] for i in result["incidents"])
    rows = {r["id"]: r["status"] for r in incident_rows(fresh_database_url, "SELECT id, status FROM incidents")}
    assert rows == {ids[0]: "resolved", ids[1]: "detected"}, "the work is committed; the reconciler owes the rest"
    # One line per refused call (the batch of two is one call), not one per incident or per retry.
    assert out.count("hand-on failed") == 2, out
