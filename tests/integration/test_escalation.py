"""Escalation against real Postgres, Redis and a local HTTP server, with an injected clock."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest

from erdu_tasks.escalation import runs as escalation, sweep as escalation_sweep
from erdu_tasks.escalation.gates import build_gates
from erdu_tasks.tasks import people
from erdu_tasks.store import incidents as store
from erdu_tasks.catalog import Catalog, Service
from erdu_tasks.model import Status
from erdu_tasks.settings import load_settings
from erdu_tasks.escalation.channels.webhook import verify_signature
from erdu_tasks.runtime import Runtime
from tests.integration.escalation_support import db, endpoints, redis_client, t0  # noqa: F401 (fixtures)
from tests.integration.escalation_support import (
    SECRET,
    Endpoints,
    Reply,
    escalate,
    make_escalator,
    new_incident,
    rows,
    timeline_whats,
    webhook,
)

FIX = {
    "runbook": "restart-db",
    "attempt": 1,
    "actions": [{"step": "1:action:0", "action": "restart", "ok": True, "detail": "exit 0", "duration": 1.5,
                 "output": {"argv": ["systemctl", "restart", "orders-db"], "exit_code": 0,
                            "stderr": "Job for orders-db.service failed"}, "reused": False}],
    "validation": {"ok": False, "detail": "check tcp orders-db:5432: connection refused", "duration": 0.1},
    "rollback": [],
}



def at(t0: datetime, minutes: float = 0, seconds: float = 0) -> datetime:
    return t0 + timedelta(minutes=minutes, seconds=seconds)


def steps_seen(endpoints: Endpoints) -> list[tuple[str, int, int]]:
    return [(r.path, r.json["level"], r.json["repeat"]) for r in endpoints.received]


# --------------------------------------------------------------------------- deadlines


def test_no_ack_goes_to_level_two_after_the_deadline_repeats_and_an_ack_stops_it(db, endpoints, redis_client, t0):
    section = {
        "channels": {"page": webhook(endpoints, "/page"), "mail": webhook(endpoints, "/mail")},
        "policies": {"P1": [{"channels": ["page"], "ack_deadline": "5m", "repeat_interval": "2m"},
                            {"channels": ["page", "mail"], "repeat_interval": "10m"}]},
    }
    esc = make_escalator(db, section, redis=redis_client)
    with db.transaction() as conn:
        iid = new_incident(conn, service="orders-db", title="Database connection failed")
        store.update_fields(conn, iid, {"root_cause": "connection pool exhausted", "fix": FIX,
                                        "resolution_actions": FIX["actions"],
                                        "affected_services": ["orders-db", "checkout"]})
        escalate(conn, iid, now=t0, reason="runbook restart-db did not fix it")

    esc.sweep(t0)
    assert steps_seen(endpoints) == [("/page", 1, 0)]
    first = endpoints.received[0]
    assert verify_signature(SECRET.encode(), first.headers["x-erdu-timestamp"], first.body,
                            first.headers["x-erdu-signature"], now=time.time())
    body = first.json
    assert body["incident_id"] == iid and body["title"] == "Database connection failed"
    assert body["severity"] == "P1" and body["reason"] == "runbook restart-db did not fix it"
    assert body["affected_services"] == ["orders-db", "checkout"]
    assert body["root_cause"] == "connection pool exhausted"
    assert [f["action"] for f in body["attempted_fixes"]] == ["restart-db: restart", "restart-db: validation"]
    assert "Job for orders-db.service failed" in body["attempted_fixes"][0]["output"]
    assert "connection refused" in body["attempted_fixes"][1]["output"]
    assert body["see"]["command"] == f"erdu incidents show {iid}"

    esc.sweep(at(t0, 1))
    assert len(endpoints.received) == 1, "nothing is due one minute in"
    esc.sweep(at(t0, 2))
    esc.sweep(at(t0, 4))
    assert steps_seen(endpoints)[1:] == [("/page", 1, 1), ("/page", 1, 2)]
    esc.sweep(at(t0, 5))
    assert sorted(steps_seen(endpoints)[3:]) == [("/mail", 2, 0), ("/page", 2, 0)]
    assert "not acknowledged at level 1" in endpoints.received[-1].json["reason"]
    esc.sweep(at(t0, 9))
    assert len(endpoints.received) == 5, "level 1 stops repeating once level 2 began"
    esc.sweep(at(t0, 15))
    assert sorted(steps_seen(endpoints)[5:]) == [("/mail", 2, 1), ("/page", 2, 1)]

    people.acknowledge(SimpleNamespace(db=db), iid, "alice")
    esc.sweep(at(t0, 25))
    esc.sweep(at(t0, 60))
    assert len(endpoints.received) == 7, "an acknowledged incident is not notified again"
    run = rows(db, "SELECT * FROM escalation_runs WHERE incident_id = %s", (iid,))[0]
    assert run["state"] == "acknowledged" and run["stopped_at"] is not None and run["level"] == 2
    whats = timeline_whats(db, iid)
    assert "acknowledged by alice" in whats
    assert whats[-1] == "escalation stopped at level 2: acknowledged"
    assert sum(w.startswith("escalation level") for w in whats) == 5


# --------------------------------------------------------------------------- failing channels


def test_a_failing_channel_retries_with_backoff_then_the_next_level_and_every_attempt_shows(db, endpoints,
                                                                                             redis_client, t0):
    endpoints.replies["/flaky"] = Reply(503, b"upstream down")
    section = {
        "channels": {"flaky": webhook(endpoints, "/flaky"), "backup": webhook(endpoints, "/backup")},
        "policies": {"P2": [{"channels": ["flaky"], "ack_deadline": "30m"}, {"channels": ["backup"]}]},
        "retry": {"max_attempts": 3, "backoff_base": "10s", "backoff_cap": "1m"},
    }
    esc = make_escalator(db, section, redis=redis_client)
    with db.transaction() as conn:
        iid = new_incident(conn, service="search", severity="P2")
        escalate(conn, iid, now=t0)

    esc.sweep(t0)
    esc.sweep(at(t0, seconds=5))
    assert len(endpoints.at("/flaky")) == 1, "the retry waits for its backoff (10 s)"
    esc.sweep(at(t0, seconds=10))
    assert len(endpoints.at("/flaky")) == 2 and not endpoints.at("/backup")
    esc.sweep(at(t0, seconds=25))
    assert len(endpoints.at("/flaky")) == 2, "the second backoff is 20 s"
    esc.sweep(at(t0, seconds=30))
    assert len(endpoints.at("/flaky")) == 3
    assert [r.json["level"] for r in endpoints.at("/backup")] == [2], "gave up on level 1: level 2 at once"
    esc.sweep(at(t0, 10))
    assert len(endpoints.received) == 4

    attempts = rows(db, "SELECT channel, attempt, ok, gave_up, response_code, detail FROM deliveries"
                        " WHERE incident_id = %s ORDER BY id", (iid,))
    assert [(a["channel"], a["attempt"], a["ok"], a["gave_up"]) for a in attempts] == [
        ("flaky", 1, False, False), ("flaky", 2, False, False), ("flaky", 3, False, True), ("backup", 1, True, False)]
    assert all(a["response_code"] == 503 and "upstream down" in a["detail"] for a in attempts[:3])
    whats = timeline_whats(db, iid)
    failures = [w for w in whats if "to flaky failed" in w]
    assert [w.split("(")[1].split(")")[0] for w in failures] == ["attempt 1/3", "attempt 2/3", "attempt 3/3"]
    assert failures[0].endswith("retry in 10.0 s") and failures[2].endswith("giving up")
    assert "every delivery of level 1 failed: moving on to the next level" in whats
    assert any(w.startswith("level 2 notification sent to backup") for w in whats)


def test_a_permanent_failure_is_not_retried(db, endpoints, redis_client, t0):
    endpoints.replies["/gone"] = Reply(404, b"no such hook")
    section = {"channels": {"gone": webhook(endpoints, "/gone"), "backup": webhook(endpoints, "/backup")},
               "policies": {"P3": [{"channels": ["gone"], "ack_deadline": "1h"}, {"channels": ["backup"]}]}}
    esc = make_escalator(db, section, redis=redis_client)
    with db.transaction() as conn:
        iid = new_incident(conn, service="search", severity="P3")
        escalate(conn, iid, now=t0)
    esc.sweep(t0)
    esc.sweep(at(t0, 5))
    assert [r.path for r in endpoints.received] == ["/gone", "/backup"]
    assert any("giving up (permanent error)" in w for w in timeline_whats(db, iid))


# --------------------------------------------------------------------------- doubled sweeps, lost workers


def test_a_doubled_or_redelivered_sweep_sends_nothing_twice(db, endpoints, redis_client, t0):
    endpoints.replies["/page"] = Reply(200, b"ok", delay=0.02)
    section = {"channels": {"page": webhook(endpoints, "/page")},
               "policies": {"P1": [{"channels": ["page"], "ack_deadline": "5m"}, {"channels": ["page"]}]}}
    prefix = "test:doubled:"
    first = make_escalator(db, section, redis=redis_client, worker="sweeper-1", prefix=prefix)
    second = make_escalator(db, section, redis=redis_client, worker="sweeper-2", prefix=prefix)
    with db.transaction() as conn:
        ids = [new_incident(conn, service=f"svc{i}") for i in range(20)]
        for iid in ids:
            escalate(conn, iid, now=t0)

    def race(now: datetime) -> None:
        barrier = threading.Barrier(2)
        errors = []

        def run(esc):
            try:
                barrier.wait()
                esc.sweep(now)
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(e,)) for e in (first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors

    race(t0)
    assert sorted(r.json["incident_id"] for r in endpoints.received) == sorted(ids)
    # A redelivered sweep for the same moment, and one whose runs were forced due again.
    first.sweep(t0)
    with db.transaction() as conn:
        conn.execute("UPDATE escalation_runs SET next_at = %s", (t0,))
    second.sweep(t0)
    assert len(endpoints.received) == 20
    race(at(t0, 5))
    assert sorted(r.json["incident_id"] for r in endpoints.received if r.json["level"] == 2) == sorted(ids)
    assert len(endpoints.received) == 40
    claims = rows(db, "SELECT count(*) AS n, count(DISTINCT step_key) AS keys FROM escalation_steps")[0]
    assert claims["n"] == claims["keys"] == 40


def test_a_sweeper_lost_between_claim_and_send_loses_no_step(db, endpoints, redis_client, t0):
    section = {"channels": {"page": webhook(endpoints, "/page")},
               "policies": {"P1": [{"channels": ["page"], "ack_deadline": "5m"}, {"channels": ["page"]}]}}
    esc = make_escalator(db, section, redis=redis_client)
    with db.transaction() as conn:
        iid = new_incident(conn, service="orders-db")
        escalate(conn, iid, now=t0)
    # The first sweeper claims level 1 and dies before sending anything.
    esc._plan_due_runs(t0, escalation_sweep._Context([], []), escalation_sweep.SweepReport())
    assert rows(db, "SELECT level FROM escalation_steps")[0]["level"] == 1 and not endpoints.received
    # A fresh process picks the claimed step up.
    make_escalator(db, section, redis=redis_client, worker="sweeper-2").sweep(at(t0, seconds=5))
    assert [(r.json["level"]) for r in endpoints.received] == [1]
    # Level 2: this time the sweeper dies after claiming the delivery attempt, mid-send.
    esc._plan_due_runs(at(t0, 5), escalation_sweep._Context([], []), escalation_sweep.SweepReport())
    step = rows(db, "SELECT id FROM escalation_steps WHERE level = 2")[0]
    with db.transaction() as conn:
        conn.execute("INSERT INTO deliveries (step_id, incident_id, channel, attempt, claimed_at)"
                     " VALUES (%s, %s, 'page', 1, %s)", (step["id"], iid, at(t0, 5)))
    esc.sweep(at(t0, 5, 10))
    assert len(endpoints.received) == 1, "an attempt in flight is left alone while its lease runs"
    esc.sweep(at(t0, 7))
    esc.sweep(at(t0, 8))
    assert [r.json["level"] for r in endpoints.received] == [1, 2], "after the lease, the lost attempt is retried"
    assert any("the worker was lost during this delivery" in w for w in timeline_whats(db, iid))


# --------------------------------------------------------------------------- silences and maintenance windows


def test_a_maintenance_window_keeps_matching_incidents_quiet_and_resumes_them_when_it_ends(db, endpoints,
                                                                                          redis_client, t0):
    from erdu_tasks.escalation import silences

    section = {"channels": {"page": webhook(endpoints, "/page")},
               "policies": {"default": [{"channels": ["page"], "repeat_interval": "2m"}]}}
    esc = make_escalator(db, section, redis=redis_client)
    with db.transaction() as conn:
        payments = new_incident(conn, service="payments", labels={"env": "prod"})
        search = new_incident(conn, service="search", labels={"env": "prod"})
        escalate(conn, payments, now=t0)
        escalate(conn, search, now=t0)
        window = silences.add_silence(conn, silences.parse_matchers(["service=payments", "label.env=prod"]),
                                      starts_at=at(t0, 1), ends_at=at(t0, 30), author="bob",
                                      comment="database upgrade", now=t0)
    esc.sweep(t0)
    assert sorted(r.json["incident_id"] for r in endpoints.received) == sorted([payments, search])
    esc.sweep(at(t0, 2))
    esc.sweep(at(t0, 10))
    during = [r.json["incident_id"] for r in endpoints.received[2:]]
    assert payments not in during and during.count(search) == 2, "only the unsilenced incident repeats"
    whats = timeline_whats(db, payments)
    assert any(w.startswith(f"silenced by {window.id}") and "database upgrade" in w for w in whats)
    with db.transaction() as conn:
        assert silences.held_counts(conn, [window.id]) == {window.id: (1, 1)}
        # A new incident for the silenced service is parked before its fix, and counted.
        fresh = new_incident(conn, service="payments", labels={"env": "prod"})
        assert escalation.gate_before_assess(conn, build_gates(rules=()), store.get_incident(conn, fresh),
                                             worker="commander", now=at(t0, 11))
        assert silences.held_counts(conn, [window.id]) == {window.id: (2, 2)}

    report = esc.sweep(at(t0, 31))
    assert report.resume == [(fresh, "assess")], "the parked pipeline resumes at its stage"
    assert [r.json["incident_id"] for r in endpoints.received[4:]].count(payments) == 1
    assert "silence " + window.id + " ended: escalation resumes" in timeline_whats(db, payments)
    assert f"silence {window.id} ended: resuming assess" in timeline_whats(db, fresh)


def test_expiring_a_silence_early_resumes_at_the_next_sweep(db, endpoints, redis_client, t0):
    from erdu_tasks.escalation import silences

    section = {"channels": {"page": webhook(endpoints, "/page")}}
    esc = make_escalator(db, section, redis=redis_client)
    with db.transaction() as conn:
        s = silences.add_silence(conn, silences.parse_matchers(["tag=~data.*"]), starts_at=t0,
                                 ends_at=at(t0, 600), author="bob", comment="noisy", now=t0)
        iid = new_incident(conn, service="warehouse", tags=["database"])
        escalate(conn, iid, now=t0)
    esc.sweep(t0)
    assert not endpoints.received
    with db.transaction() as conn:
        silences.expire_silence(conn, s.id, who="bob", now=at(t0, 3))
        with pytest.raises(silences.SilenceError, match="already over"):
            silences.expire_silence(conn, s.id, who="bob", now=at(t0, 4))
    esc.sweep(at(t0, 3))
    assert [r.json["incident_id"] for r in endpoints.received] == [iid]


# --------------------------------------------------------------------------- inhibition


def test_an_open_p1_keeps_its_dependants_quiet_until_it_is_resolved(db, endpoints, redis_client, t0, tmp_path):
    from erdu_tasks.tasks.pipeline import close_incident

    catalog = Catalog([Service(name="db"), Service(name="api", depends_on=["db"]),
                       Service(name="web", depends_on=["api"]), Service(name="billing")])
    section = {"channels": {"page": webhook(endpoints, "/page"),
                            "pd": {"type": "pagerduty", "routing_key": "R" * 32, "events_url": endpoints.url + "/pd"}},
               "policies": {"default": [{"channels": ["page", "pd"]}]}}
    esc = make_escalator(db, section, redis=redis_client, catalog=catalog)
    with db.transaction() as conn:
        parent = new_incident(conn, service="db", severity="P1")
        api = new_incident(conn, service="api", severity="P2")
        web = new_incident(conn, service="web", severity="P3")
        billing = new_incident(conn, service="billing", severity="P2")
        for iid in (parent, api, web, billing):
            escalate(conn, iid, now=t0)

    esc.sweep(t0)
    notified = {r.json["incident_id"] for r in endpoints.at("/page")}
    assert notified == {parent, billing}
    assert {r.json["dedup_key"] for r in endpoints.at("/pd")} == {parent, billing}
    children = rows(db, "SELECT id FROM incidents WHERE parent_id = %s ORDER BY id", (parent,))
    assert sorted(c["id"] for c in children) == sorted([api, web])
    assert any(w.startswith(f"linked to parent {parent}") for w in timeline_whats(db, api))
    esc.sweep(at(t0, 30))
    assert len(endpoints.received) == 4, "children stay quiet while the parent is open"

    # A person resolves the parent; the resolver closes it (report, PagerDuty resolve, children re-checked).
    rt = Runtime(load_settings(reports_dir=tmp_path / "reports"), db=db)
    rt.catalog = catalog
    with db.transaction() as conn:
        store.transition(conn, parent, expected=[Status.ESCALATED], to=Status.RESOLVED, actor="person:alice",
                         what="resolved by alice: failed over", updates={"resolved_by": "person:alice"})
        assert close_incident(conn, rt, store.get_incident(conn, parent, for_update=True), "resolver-1", human=True)
    report = (tmp_path / "reports" / f"{parent}.md").read_text()
    assert f"child {api} (P2 api, escalated) re-checked: escalating on its own" in report
    assert f"child {web} (P3 web, escalated) re-checked: escalating on its own" in report

    esc.sweep(at(t0, 31))
    pd_resolves = [r.json for r in endpoints.at("/pd") if r.json["event_action"] == "resolve"]
    assert pd_resolves == [{"routing_key": "R" * 32, "event_action": "resolve", "dedup_key": parent}]
    assert [r.json["kind"] for r in endpoints.at("/page") if r.json["incident_id"] == parent] == ["trigger", "resolve"]
    on_their_own = {r.json["incident_id"] for r in endpoints.at("/page")[2:] if r.json["kind"] == "trigger"}
    assert on_their_own == {api, web}
    esc.sweep(at(t0, 40))
    assert len(endpoints.received) == 10


# --------------------------------------------------------------------------- storms


@pytest.mark.slow(10)
def test_five_hundred_incidents_in_a_minute_send_the_channel_limit_plus_one_digest(db, endpoints, redis_client, t0):
    section = {"channels": {"chat": {"type": "slack", "url": endpoints.url + "/chat", "max_per_minute": 10}},
               "policies": {"default": [{"channels": ["chat"]}]}}
    prefix = "test:storm:"
    workers = [make_escalator(db, section, redis=redis_client, worker=f"sweeper-{n}", prefix=prefix)
               for n in (1, 2)]
    with db.transaction() as conn:
        ids = [new_incident(conn, service=f"shard-{i}", severity="P2") for i in range(500)]
    for i, iid in enumerate(ids):   # they arrive over 50 seconds of the same minute
        with db.transaction() as conn:
            escalate(conn, iid, now=at(t0, seconds=i // 10))

    threads = [threading.Thread(target=w.sweep, args=(at(t0, seconds=50),)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(endpoints.received) == 10, "two sweepers share one per-channel count in Redis"
    workers[0].sweep(at(t0, seconds=54))
    assert len(endpoints.received) == 10
    workers[1].sweep(at(t0, seconds=60))
    workers[0].sweep(at(t0, seconds=61))
    assert len(endpoints.received) == 11
    digest = endpoints.received[-1].json
    assert "490 notification(s) held back on chat" in str(digest)
    workers[0].sweep(at(t0, 5))
    assert len(endpoints.received) == 11
    held = rows(db, "SELECT count(*) AS n FROM deliveries WHERE held")[0]["n"]
    assert held == 490
    sample = rows(db, "SELECT incident_id FROM deliveries WHERE held ORDER BY id LIMIT 1")[0]["incident_id"]
    assert any("held by the rate limit (10/minute" in w for w in timeline_whats(db, sample))


# --------------------------------------------------------------------------- quiet hours, stuck incidents


def test_quiet_hours_hold_back_p4_but_never_p1(db, endpoints, redis_client, t0):
    start, end = (t0 - timedelta(hours=1)).strftime("%H:%M"), (t0 + timedelta(hours=1)).strftime("%H:%M")
    section = {"channels": {"page": webhook(endpoints, "/page")},
               "policies": {"default": [{"channels": ["page"]}]},
               "quiet_hours": {"timezone": "UTC", "start": start, "end": end, "severities": ["P4", "P5"]}}
    esc = make_escalator(db, section, redis=redis_client)
    with db.transaction() as conn:
        low = new_incident(conn, service="reports", severity="P4")
        high = new_incident(conn, service="checkout", severity="P1")
        escalate(conn, low, now=t0)
        escalate(conn, high, now=t0)
    esc.sweep(t0)
    assert [r.json["incident_id"] for r in endpoints.received] == [high]
    run = rows(db, "SELECT state, next_at FROM escalation_runs WHERE incident_id = %s", (low,))[0]
    assert run["state"] == "quiet" and t0 < run["next_at"] <= t0 + timedelta(hours=1)
    assert any(w.startswith("quiet hours: P4 notifications wait until") for w in timeline_whats(db, low))
    esc.sweep(run["next_at"] - timedelta(seconds=1))
    assert len(endpoints.received) == 1
    esc.sweep(run["next_at"])
    assert [r.json["incident_id"] for r in endpoints.received] == [high, low]


def test_incidents_stuck_in_a_stage_are_found_unless_a_silence_holds_them(db, t0):
    from erdu_tasks.escalation import silences

    with db.transaction() as conn:
        stuck, held, fresh = (new_incident(conn, service=s) for s in ("a", "b", "c"))
        conn.execute("UPDATE incidents SET status = 'investigating', status_changed_at = %s WHERE id = ANY(%s)",
                     (t0 - timedelta(minutes=30), [stuck, held]))
        silence = silences.add_silence(conn, silences.parse_matchers(["service=b"]), starts_at=t0,
                                       ends_at=at(t0, 60), author="bob", comment="drill", now=t0)
        escalation.hold(conn, store.get_incident(conn, held), kind="silence", stage="fix", now=t0, worker=None,
                        silence=silence)
        found = [r["id"] for r in escalation.stuck_incidents(conn, now=t0, after=timedelta(minutes=15))]
    assert found == [stuck]
    assert fresh not in found


# --------------------------------------------------------------------------- email


def test_a_level_that_mails_reaches_a_local_smtp_server_once(db, redis_client, t0):
    from email import message_from_bytes, policy

    from aiosmtpd.controller import Controller

    from tests.conftest import free_port

    class Inbox:
        def __init__(self) -> None:
            self.messages = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - the aiosmtpd API
            self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
            return "250 Message accepted"

    inbox, port = Inbox(), free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        section = {"channels": {"mail": {"type": "email", "host": "127.0.0.1", "port": port,
                                         "sender": "erdu@example.com", "recipients": ["oncall@example.com"]}},
                   "policies": {"default": [{"channels": ["mail"], "ack_deadline": "10m"}, {"channels": ["mail"]}]}}
        esc = make_escalator(db, section, redis=redis_client)
        with db.transaction() as conn:
            iid = new_incident(conn, service="orders-db", title="Database connection failed")
            store.update_fields(conn, iid, {"root_cause": "connection pool exhausted", "fix": FIX})
            escalate(conn, iid, now=t0, reason="runbook restart-db did not fix it")
        esc.sweep(t0)
        esc.sweep(at(t0, 5))
        assert len(inbox.messages) == 1
        mail = inbox.messages[0]
        assert iid in mail["Subject"] and mail["To"] == "oncall@example.com"
        text = mail.get_content()
        for expected in ("runbook restart-db did not fix it", "connection pool exhausted",
                         "restart-db: restart: succeeded", "Job for orders-db.service failed",
                         f"erdu incidents show {iid}"):
            assert expected in text, expected
        esc.sweep(at(t0, 10))
        assert [m["Subject"].count("level 2") for m in inbox.messages] == [0, 1]
    finally:
        smtp.stop()
