"""Slack interactivity against a local fake Slack: the real API app, real Postgres and Redis, signed clicks.

A notification goes out through the real Slack channel to the fake's incoming webhook; the fake then
builds the interaction Slack would send for a click on one of its buttons, signed (or forged), and
serves the response_url ERDU answers on.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone

import pytest
import redis
from fastapi.testclient import TestClient

from erdu_tasks import names
from erdu_tasks.api.app import create_app
from erdu_tasks.escalation.runs import escalation_config
from erdu_tasks.escalation.sweep import Escalator
from erdu_tasks.settings import load_settings
from erdu_tasks.tasks import publish
from tests.conftest import create_database, drop_database_later
from tests.integration.escalation_support import escalate, new_incident, rows, timeline_whats
from tests.integration.fake_slack import FakeSlack, Message, signed

pytestmark = pytest.mark.xdist_group("slack-interactions")

SIGNING_SECRET = "8f14e45fceea167a5a36dedd4bea2543"
PATH = "/v1/slack/interactions"
ALICE, VIEWER, ADMIN, STRANGER = "U0ALICE01", "U0VIC0001", "U0ADMIN01", "U0NOBODY1"


class Env:
    def __init__(self, client: TestClient, slack: FakeSlack, escalator: Escalator, broker: redis.Redis) -> None:
        self.client = client
        self.slack = slack
        self.escalator = escalator
        self.db = client.app.state.erdu.rt.db
        self.broker = broker

    def page(self, service: str) -> tuple[str, Message]:
        """An escalated P1 of its own, notified to the fake Slack by a real sweep; its message."""
        now = datetime.now(timezone.utc)
        with self.db.transaction() as conn:
            iid = new_incident(conn, service=service, title=f"{service} is down")
            escalate(conn, iid, now=now)
        before = len(self.slack.messages)
        self.escalator.sweep(now)
        assert len(self.slack.messages) == before + 1, "the sweep posted one message to Slack"
        return iid, self.slack.messages[-1]

    def send(self, body: bytes, headers: dict[str, str]):
        return self.client.post(PATH, content=body, headers=headers)

    def click(self, message: Message, action: str, user: str = ALICE, **sign):
        body = self.slack.click(message, action, user)
        return self.send(body, signed(body, SIGNING_SECRET, **sign))

    def status(self, iid: str) -> str:
        return rows(self.db, "SELECT status FROM incidents WHERE id = %s", (iid,))[0]["status"]


@pytest.fixture(scope="module")
def env(redis_server, tmp_path_factory):
    slack = FakeSlack()
    url = create_database()
    settings = load_settings(
        database_url=url, redis_url=redis_server.url, api_token="write-token-for-tests",
        alerts_dir=tmp_path_factory.mktemp("alerts"),
        api={"public_url": "https://erdu.example.com"},
        slack={"signing_secret": SIGNING_SECRET, "response_hosts": ["127.0.0.1"]},
        people={"alice": {"display_name": "Alice Martin", "role": "responder", "contacts": {"slack_user": ALICE}},
                "victor": {"role": "viewer", "contacts": {"slack_user": VIEWER}},
                "root": {"role": "admin", "contacts": {"slack_user": ADMIN}}},
        escalation={"channels": {"oncall": {"type": "slack", "url": slack.hook_url}},
                    "policies": {"P1": [{"channels": ["oncall"], "ack_deadline": "5m"}]},
                    "silences": {"max_duration": "30m"}},
    )
    app = create_app(settings)
    broker = redis.Redis.from_url(redis_server.url)
    escalator = None
    with TestClient(app) as client, pytest.MonkeyPatch.context() as patch:
        # Hand-ons (a Slack resolve hands the incident to the resolver) go to this test's own Redis.
        patch.setattr(publish, "default_app", app.state.erdu.celery)
        escalator = Escalator(db=app.state.erdu.rt.db, config=escalation_config(settings.escalation,
                                                                                settings.alerts_dir),
                              redis=broker, rate_prefix=f"test:{secrets.token_hex(4)}:", jitter=lambda: 1.0)
        yield Env(client, slack, escalator, broker)
        escalator.close()
    broker.close()
    slack.close()
    drop_database_later(url)


def test_the_notification_carries_ack_resolve_silence_and_open_in_console_buttons(env):
    iid, message = env.page("checkout")
    assert message.button("erdu.ack")["value"] == iid
    assert message.button("erdu.resolve")["value"] == iid
    assert message.button("erdu.silence")["text"]["text"] == "Silence 1 h"
    assert message.button("erdu.open")["url"] == f"https://erdu.example.com/incidents/{iid}"
    assert "checkout is down" in message.text, "the readable text is still there"


def test_a_signed_ack_acknowledges_the_incident_records_who_and_updates_the_message(env):
    iid, message = env.page("orders")
    r = env.click(message, "erdu.ack")
    assert r.status_code == 200 and r.json()["ok"] and r.json()["person"] == "alice", r.text
    assert env.status(iid) == "acknowledged"
    line = rows(env.db, "SELECT actor, what FROM incident_timeline WHERE incident_id = %s AND what LIKE "
                        "'acknowledged%%'", (iid,))
    assert line == [{"actor": "person:alice", "what": "acknowledged by alice"}]
    assert message.updates == 1 and "Acknowledged* by Alice Martin (`alice`)" in message.rendered()
    assert message.button("erdu.ack") is None, "an acknowledged incident has no Ack button any more"
    assert message.button("erdu.resolve") and message.button("erdu.open")
    assert message.text == f"[P1] {iid}: orders is down (level 1)"
    assert "*Status*\\nacknowledged" in message.rendered() and "*Status*\\nescalated" not in message.rendered()

    again = env.click(message, "erdu.resolve", user=VIEWER)   # a viewer may not act
    assert again.json()["ok"] is False and env.status(iid) == "acknowledged"
    assert "victor is a viewer" in env.slack.ephemeral[-1]


def test_a_repeated_ack_and_a_slack_retry_record_nothing_more(env):
    iid, message = env.page("payments")
    first_body = env.slack.click(message, "erdu.ack", ALICE)
    assert env.send(first_body, signed(first_body, SIGNING_SECRET)).json()["ok"]
    # Slack retrying the same click (re-signed later, with X-Slack-Retry-Num) does nothing.
    retried = env.send(first_body, signed(first_body, SIGNING_SECRET, timestamp=int(datetime.now().timestamp()) + 1,
                                          retry=1))
    assert retried.status_code == 200 and retried.json()["message"] == "already handled"
    # A second click on a stale copy of the message (its Ack button still showing) changes nothing either.
    stale = Message(message.ts, message.text, [b for b in message.blocks if b.get("block_id") != "erdu.actions"] + [
        {"type": "actions", "block_id": "erdu.actions",
         "elements": [{"type": "button", "action_id": "erdu.ack", "value": iid,
                       "text": {"type": "plain_text", "text": "Acknowledge"}}]}])
    posts = env.slack.response_posts()
    second = env.send(body := env.slack.click(stale, "erdu.ack", ALICE), signed(body, SIGNING_SECRET))
    assert second.status_code == 200 and second.json()["ok"]
    assert "already acknowledged" in env.slack.ephemeral[-1]
    assert env.slack.response_posts() == posts + 1 and message.updates == 1, "only the ephemeral reply"
    assert sum(w.startswith("acknowledged by") for w in timeline_whats(env.db, iid)) == 1


def test_forged_stale_and_replayed_requests_are_refused_and_change_nothing(env):
    iid, message = env.page("search")
    body = env.slack.click(message, "erdu.ack", ALICE)
    now = int(datetime.now().timestamp())
    posts = env.slack.response_posts()
    refused = {
        "forged": signed(body, "not-the-signing-secret"),
        "tampered": signed(body.replace(b"erdu.ack", b"erdu.resolve"), "not-the-signing-secret"),
        "stale": signed(body, SIGNING_SECRET, timestamp=now - 360),
        "future": signed(body, SIGNING_SECRET, timestamp=now + 360),
        "unsigned": {"Content-Type": "application/x-www-form-urlencoded"},
    }
    for what, headers in refused.items():
        r = env.send(body, headers)
        assert r.status_code == 401, (what, r.text)
    tampered = env.send(body.replace(b"erdu.ack", b"erdu.resolve"), signed(body, SIGNING_SECRET))
    assert tampered.status_code == 401 and "does not match" in tampered.json()["detail"]
    assert "more than 5 minutes" in env.send(body, refused["stale"]).json()["detail"]
    assert env.status(iid) == "escalated" and env.slack.response_posts() == posts and message.updates == 0
    assert not any(w.startswith("acknowledged") for w in timeline_whats(env.db, iid))

    # The genuine request acts once; the very same bytes and headers again are a replay.
    good = signed(body, SIGNING_SECRET)
    assert env.send(body, good).status_code == 200 and env.status(iid) == "acknowledged"
    replay = env.send(body, good)
    assert replay.status_code == 401 and "replay" in replay.json()["detail"]
    assert sum(w.startswith("acknowledged by") for w in timeline_whats(env.db, iid)) == 1
    assert env.broker.ttl(names.SLACK_SEEN_PREFIX + good["X-Slack-Signature"][3:]) > 300


def test_an_unmapped_slack_user_is_refused_with_an_ephemeral_reply_and_nothing_changes(env):
    iid, message = env.page("inventory")
    r = env.click(message, "erdu.ack", user=STRANGER)
    assert r.status_code == 200 and r.json()["ok"] is False
    assert env.status(iid) == "escalated" and message.updates == 0
    assert "U0NOBODY1" in env.slack.ephemeral[-1] and "not an ERDU person" in env.slack.ephemeral[-1]
    assert not any("acknowledged" in w for w in timeline_whats(env.db, iid))


def test_silence_needs_an_admin_and_is_bounded_by_the_max_silence_duration(env):
    iid, message = env.page("ledger")
    assert env.click(message, "erdu.silence", user=ALICE).json()["ok"] is False
    assert "needs the admin role" in env.slack.ephemeral[-1]
    assert rows(env.db, "SELECT count(*) AS n FROM silences WHERE author = 'alice'")[0]["n"] == 0

    r = env.click(message, "erdu.silence", user=ADMIN)
    assert r.status_code == 200 and r.json()["ok"], r.text
    [silence] = rows(env.db, "SELECT * FROM silences WHERE author = 'root'")
    assert silence["matchers"] == [{"name": "service", "op": "=", "value": "ledger"}]
    assert silence["ends_at"] - silence["starts_at"] == timedelta(minutes=30), "cut to max_duration"
    assert any(w.startswith("service ledger silenced by root") for w in timeline_whats(env.db, iid))
    assert "Silenced* by `root`" in message.rendered()


def test_resolve_from_slack_resolves_and_hands_the_incident_to_the_resolver(env):
    iid, message = env.page("billing")
    queued = env.broker.llen(names.Queue.RESOLVER.value)
    r = env.click(message, "erdu.resolve")
    assert r.status_code == 200 and r.json()["ok"], r.text
    assert env.status(iid) == "resolved"
    assert rows(env.db, "SELECT resolved_by FROM incidents WHERE id = %s", (iid,))[0]["resolved_by"] == "person:alice"
    assert env.broker.llen(names.Queue.RESOLVER.value) == queued + 1
    assert message.button("erdu.resolve") is None and message.button("erdu.open"), "only Open stays"
    assert "Resolved* by Alice Martin" in message.rendered()


# --------------------------------------------------------------------------- with a real worker


def test_a_signed_slack_ack_stops_the_chain_a_real_worker_sweeps_and_a_forged_one_does_not(stack_factory):
    import json
    import time

    from erdu_tasks.store.db import Database
    from tests.conftest import wait_for

    slack = FakeSlack()
    escalation = {"channels": {"oncall": {"type": "slack", "url": slack.hook_url}},
                  "policies": {"default": [{"channels": ["oncall"], "ack_deadline": "1s"}, {"channels": ["oncall"]}]},
                  "stuck_after": "off"}
    people = {"alice": {"role": "responder", "contacts": {"slack_user": ALICE}}}
    slack_section = {"signing_secret": SIGNING_SECRET, "response_hosts": ["127.0.0.1"]}
    stack = stack_factory({"ERDU_ESCALATION": json.dumps(escalation), "ERDU_PEOPLE": json.dumps(people),
                           "ERDU_SLACK": json.dumps(slack_section),
                           "ERDU_API": json.dumps({"public_url": "https://console.example.com"})})
    stack.start("monitor")
    db = Database(stack.database_url)
    settings = load_settings(database_url=stack.database_url, redis_url=stack.redis_url, people=people,
                             slack=slack_section, escalation=escalation, alerts_dir=stack.alerts)

    def sweep_once() -> None:
        stack.client.send_task("erdu.sweep_escalations", queue="monitor")

    try:
        with TestClient(create_app(settings)) as client:
            started = time.monotonic()
            with db.transaction() as conn:
                iid = new_incident(conn, service="orders-db")
                escalate(conn, iid, now=datetime.now(timezone.utc))
            sweep_once()
            wait_for(lambda: slack.messages, 60, what="level 1 posted to Slack by the worker's sweep")
            [message] = slack.messages
            assert message.button("erdu.open")["url"] == f"https://console.example.com/incidents/{iid}"

            body = slack.click(message, "erdu.ack", ALICE)
            forged = client.post(PATH, content=body, headers=signed(body, "a-guessed-secret"))
            assert forged.status_code == 401
            with db.transaction() as conn:
                assert conn.execute("SELECT status FROM incidents WHERE id = %s", (iid,)).fetchone()["status"] \
                    == "escalated"
            assert client.post(PATH, content=body, headers=signed(body, SIGNING_SECRET)).json()["ok"]

            # Past level 1's deadline, sweeps find the incident acknowledged: the run stops, level 2 never goes out.
            wait_for(lambda: time.monotonic() - started > 1.5, 10, what="level 1's ack deadline passed")

            def stopped() -> bool:
                sweep_once()
                run = rows(db, "SELECT state FROM escalation_runs WHERE incident_id = %s", (iid,))[0]
                return run["state"] == "acknowledged"

            wait_for(stopped, 60, 0.3, what="the escalation run stopped on the Slack ack")
            assert len(slack.messages) == 1, "no level 2 after the ack"
            assert "escalation stopped at level 1: acknowledged" in timeline_whats(db, iid)
            assert "acknowledged by alice" in timeline_whats(db, iid)
    finally:
        db.close()
        slack.close()
