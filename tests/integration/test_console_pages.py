"""The console's Celery apps, on-call and heartbeats pages without a browser: real Postgres, the API's Redis,
and a private Redis as the team app's broker (a retry's message is read off its queue there).

One app (TestClient) for the module; each test makes the rows it needs through the store's own functions.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
import redis
from fastapi.testclient import TestClient

from erdu_tasks.api.app import create_app
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings
from erdu_tasks.store import celery_apps as history
from erdu_tasks.tasks.heartbeats import ping
from tests.conftest import RedisServer, create_database, drop_database_later, free_port
from tests.integration.test_console import HOSTILE, PEOPLE, csrf_of, sign_in

pytestmark = pytest.mark.xdist_group("console_pages")


@pytest.fixture(scope="module")
def setup(redis_server, tmp_path_factory):
    broker = RedisServer(tmp_path_factory.mktemp("shop-broker"))
    url = create_database()
    settings = load_settings(
        database_url=url, redis_url=redis_server.url, api_token="pages-write-token",
        api_read_token="pages-read-token", people=PEOPLE, flower={"port": free_port()},
        reports_dir=str(tmp_path_factory.mktemp("reports")),
        monitors={"celery_apps": {"apps": [{"name": "shop", "broker_url": broker.url, "queues": ["orders"],
                                            "default_queue": "orders"}]}},
        oncall={"schedules": {"primary": {"time_zone": "Europe/Berlin", "layers": [
            {"start": "2026-05-04", "rotation": "daily", "participants": ["alice", "bob"]}]}}},
        heartbeats={"defaults": {"period": "5m", "grace": "1m"}})
    rt = Runtime(settings)
    queue = redis.Redis.from_url(broker.url)
    try:
        with TestClient(create_app(settings)) as client:
            yield SimpleNamespace(client=client, rt=rt, queue=queue)
    finally:
        queue.close()
        rt.db.close()
        broker.stop()
        drop_database_later(url)


def failed_task(rt: Runtime, **fields) -> str:
    task_id = fields.pop("task_id", None) or str(uuid.uuid4())
    row = {"task_id": task_id, "name": "shop.charge", "state": "FAILURE", "args": "[42, 'eur']",
           "kwargs": "{'attempt': 1}", "worker": "shop1@host", "exception": "CardDeclined",
           "error": "card 42 declined", "traceback": 'Traceback (most recent call last):\n  File "shop/pay.py"',
           "queue": "orders", "routing_key": "orders", "executions": 1, **fields}
    with rt.db.transaction() as conn:
        history.upsert_tasks(conn, "shop", [row])
    return task_id


def published(queue: redis.Redis, name: str = "orders") -> list[dict]:
    """The messages waiting on a queue of the app's broker, as (headers, args, kwargs)."""
    out = []
    for raw in queue.lrange(name, 0, -1):
        message = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        out.append({"task": message["headers"]["task"], "id": message["headers"]["id"],
                    "retry_of": message["headers"].get("erdu_retry_of"), "args": args, "kwargs": kwargs})
    return out


def test_the_celery_apps_pages_show_workers_history_search_and_one_task(setup):
    task_id = failed_task(setup.rt, args="[42, 'eur-search']")
    failed_task(setup.rt, name="shop.mail", exception="SMTPError", args="['x']")
    worker = SimpleNamespace(hostname="shop1@host", state="online", last_seen=1.7e9, offline_at=None, active=2,
                             processed=17, sw_ident="py-celery", sw_ver="5.4.0", loadavg=None)
    with setup.rt.db.transaction() as conn:
        history.save_workers(conn, "shop", [worker])
    client = setup.client
    sign_in(client, "vera-token-1")
    apps = client.get("/celery-apps")
    assert apps.status_code == 200 and 'href="/celery-apps"' in apps.text
    assert re.search(r'data-worker="shop1@host">.*?>online</span>.*?2023-11-14 22:13:20Z', apps.text, re.S)
    for query, found in (({"text": "eur-search"}, True), ({"exception": "declined"}, True),
                         ({"task_id": task_id[:8]}, True), ({"worker": "shop1@host", "name": "shop.*"}, True),
                         ({"exception": "SMTPError", "text": "eur-search"}, False)):
        page = client.get("/celery-apps/shop/tasks", params=query)
        assert page.status_code == 200 and (f'data-id="{task_id}"' in page.text) is found, query
    one = client.get(f"/celery-apps/shop/tasks/{task_id}")
    assert one.status_code == 200 and "[42, &#39;eur-search&#39;]" in one.text and "shop/pay.py" in one.text
    assert "Retrying needs the responder role" in one.text
    assert client.get("/celery-apps/nope/tasks").status_code == 404
    assert client.get("/celery-apps/shop/tasks/not-a-task").status_code == 404


def test_a_retry_is_confirmed_then_republished_audited_and_refused_to_a_viewer(setup):
    client, rt = setup.client, setup.rt
    task_id = failed_task(rt, args="[7, 'retry-me']", kwargs="{'note': 'x'}")
    setup.queue.delete("orders")
    csrf = sign_in(client, "vera-token-1")
    assert client.get(f"/celery-apps/shop/tasks/{task_id}/retry").status_code == 403
    refused = client.post(f"/celery-apps/shop/tasks/{task_id}/retry", data={"csrf": csrf})
    assert refused.status_code == 403 and "vera is a viewer" in refused.text
    assert setup.queue.llen("orders") == 0

    csrf = sign_in(client, "alice-token-1")
    confirm = client.get(f"/celery-apps/shop/tasks/{task_id}/retry")
    assert confirm.status_code == 200
    assert 'id="plan-args">[7, "retry-me"]' in confirm.text and 'id="plan-queue">orders' in confirm.text
    assert setup.queue.llen("orders") == 0   # the confirmation sends nothing
    no_csrf = client.post(f"/celery-apps/shop/tasks/{task_id}/retry", data={"note": "x"})
    assert no_csrf.status_code == 403 and setup.queue.llen("orders") == 0
    done = client.post(f"/celery-apps/shop/tasks/{task_id}/retry", data={"csrf": csrf_of(confirm.text),
                                                                         "note": "card fixed"},
                       follow_redirects=False)
    assert done.status_code == 303
    [message] = published(setup.queue)
    assert (message["task"], message["args"], message["kwargs"], message["retry_of"]) == \
        ("shop.charge", [7, "retry-me"], {"note": "x"}, task_id)
    assert done.headers["location"] == f"/celery-apps/shop/tasks/{message['id']}"
    assert f"retried by alice as {message['id']}" in client.get(done.headers["location"]).text
    with rt.db.transaction() as conn:
        [audit] = [a for a in history.list_actions(conn, "shop") if a["target"] == task_id]
    assert audit["ok"] and audit["by"] == "alice" and audit["note"] == "card fixed"
    assert audit["details"]["new_id"] == message["id"]
    chain = client.get(f"/celery-apps/shop/tasks/{task_id}").text
    assert f'href="/celery-apps/shop/tasks/{message["id"]}"' in chain and "retried by alice" in chain
    again = client.post(f"/celery-apps/shop/tasks/{task_id}/retry", data={"csrf": csrf}, follow_redirects=False)
    assert "already retried" in client.get(again.headers["location"]).text and setup.queue.llen("orders") == 1


def test_the_failures_of_one_kind_are_retried_together_at_a_rate(setup):
    client, rt = setup.client, setup.rt
    ids = [failed_task(rt, name="shop.bulk", exception="Timeout", args=f"[{n}]") for n in range(2)]
    failed_task(rt, name="shop.bulk", exception="KeyError", args="[99]")   # another kind: left alone
    setup.queue.delete("orders")
    csrf = sign_in(client, "alice-token-1")
    review = client.get("/celery-apps/shop/retry", params={"name": "shop.bulk", "exception": "Timeout",
                                                           "rate": "50"})
    assert review.status_code == 200 and "Send 2 task(s) again?" in review.text
    assert all(i in review.text for i in ids) and setup.queue.llen("orders") == 0
    too_big = client.get("/celery-apps/shop/retry", params={"name": "shop.bulk", "exception": "Timeout",
                                                            "rate": "0.1", "limit": "100"})
    assert too_big.status_code == 400 and "split the retry" in too_big.text
    done = client.post("/celery-apps/shop/retry", data={"csrf": csrf, "name": "shop.bulk", "exception": "Timeout",
                                                        "rate": "50", "limit": "100"}, follow_redirects=False)
    assert "2 of 2 task(s) retried by alice" in client.get(done.headers["location"]).text
    assert sorted(m["args"] for m in published(setup.queue)) == [[0], [1]]


def test_hostile_task_text_renders_as_inert_text(setup):
    task_id = failed_task(setup.rt, name=HOSTILE, exception=HOSTILE, error=HOSTILE, traceback=HOSTILE,
                          args=repr([HOSTILE]), worker="<b>w</b>")
    client = setup.client
    sign_in(client, "alice-token-1")
    pages = (client.get("/celery-apps/shop/tasks", params={"exception": "Boom"}),
             client.get(f"/celery-apps/shop/tasks/{task_id}"), client.get(f"/celery-apps/shop/tasks/{task_id}/retry"),
             client.get("/celery-apps"))
    for page in pages:
        assert page.status_code == 200
        html = page.text
        assert "<script>alert" not in html and "<img src=x" not in html and "<b>w" not in html
        assert "\x1b" not in html and "\u202e" not in html
    assert "Boom &lt;script&gt;alert(1)&lt;/script&gt;" in pages[1].text and "\\x1b[31mred" in pages[1].text
    assert "\\u202eevil" in pages[1].text and "\\u003cscript\\u003e" in pages[2].text


def test_the_oncall_and_heartbeats_pages_show_the_schedule_and_every_heartbeat(setup):
    ping(setup.rt, "cron-export", source="api")
    ping(setup.rt, "stale-job", source="celery", now=datetime.now(timezone.utc) - timedelta(hours=2))
    client = setup.client
    sign_in(client, "vera-token-1")
    oncall = client.get("/oncall")
    assert oncall.status_code == 200 and 'href="/oncall"' in oncall.text
    now = re.search(r'data-schedule="primary">.*?class="person">(\w+)<.*?class="next-person">(\w+)<'
                    r'.*?class="handoff">(\S+ \S+)<', oncall.text, re.S)
    assert now and {now[1], now[2]} == {"alice", "bob"}
    [summary] = setup.rt.rota.overview(datetime.now(timezone.utc))   # the page shows the rota's answer
    assert now[3] == summary["next"]["at"].replace("T", " ") and now[1] == summary["person"]
    shifts = re.search(r'<table class="list shifts" data-schedule="primary">(.*?)</table>', oncall.text, re.S)[1]
    assert re.findall(r"<tr><td>(\w+)</td>", shifts) == [now[1], now[2], now[1], now[2]]
    beats = client.get("/heartbeats")
    assert beats.status_code == 200
    assert re.search(r'data-name="cron-export" class="hb-up">.*?>up</span>.*?<td>5m 0s</td>\s*<td>1m 0s</td>'
                     r'.*?<td class="num">1</td>\s*<td>api</td>', beats.text, re.S)
    assert re.search(r'data-name="stale-job" class="hb-late">.*?>late</span>.*?>2h 0m ago</td>', beats.text, re.S)
