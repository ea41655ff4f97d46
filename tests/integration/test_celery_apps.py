"""ERDU watching a team's Celery app (tests/integration/team_celery_app.py): one private Redis, one real worker
process of the app, one watcher (the real AppRunner and event consumer) per test process. Each test stands on
its own (any order, any xdist worker); the killed worker is a second one of its own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
import redis
from celery import Celery

from tests.conftest import ROOT, RedisServer, create_database, drop_database_later, wait_for

pytestmark = pytest.mark.xdist_group("celery_apps")

SECTION = {
    "flush_interval": 0.2, "check_interval": 0.5,
    "apps": [{"name": "team", "broker_url": "", "queues": ["orders", "mail"], "default_queue": "orders",
              "in_app": ["team_celery_app"],
              "followed_by": {"orders.label": "orders.ship"},
              "thresholds": {"offline_after": 3, "stall_for": 2, "start_within": 60, "finish_within": 120,
                             "next_within": 2}}],
}


class Team:
    """The app's broker, its worker process, and ERDU's watcher of it."""

    def __init__(self, tmp: Path) -> None:
        from erdu_tasks.runtime import Runtime
        from erdu_tasks.settings import load_settings
        from erdu_tasks.tasks.celery_apps import AppRunner

        self.redis = RedisServer(tmp / "redis")
        self.broker_url = self.redis.url
        self.store = redis.Redis.from_url(self.broker_url)
        self.database_url = create_database()
        section = json.loads(json.dumps(SECTION))
        section["apps"][0]["broker_url"] = self.broker_url
        section["apps"][0]["result_backend_url"] = f"redis://127.0.0.1:{self.redis.port}/2"
        self.section = section
        self.env = {**os.environ, "TEAM_BROKER_URL": self.broker_url, "ERDU_DATABASE_URL": self.database_url,
                    "ERDU_REDIS_URL": f"redis://127.0.0.1:{self.redis.port}/1",
                    "ERDU_MONITORS": json.dumps({"celery_apps": section}), "PYTHONPATH": str(ROOT)}
        self.env.pop("ERDU_CONFIG", None)
        self.settings = load_settings(database_url=self.database_url, redis_url=self.env["ERDU_REDIS_URL"],
                                      monitors={"celery_apps": section})
        self.rt = Runtime(self.settings)
        self.config = self.rt.monitors.celery_apps
        self.handed: list[str] = []
        self.tmp = tmp
        self.workers: list[subprocess.Popen] = []
        self.worker = self.start_worker("team1@test", "orders,mail", "threads", "-c", "2")
        self.runner = AppRunner(self.rt, self.config, self.config.apps[0], host="test-host",
                                handed=lambda new, reassess: self.handed.extend(new),
                                assess=self.handed.append, resolved=lambda _id: None)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.runner.run, args=(self.stop_event,), kwargs={"tick": 0.1},
                                       daemon=True)
        self.thread.start()
        self.client = Celery("team-client", broker=self.broker_url, backend=f"redis://127.0.0.1:{self.redis.port}/2")
        self.client.conf.update(task_serializer="json", accept_content=["json"], task_send_sent_event=True)
        wait_for(self.runner.connected.is_set, 30, what="the watcher subscribed")
        self.wait_ready(self.worker)

    def start_worker(self, name: str, queues: str, pool: str, *extra: str) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.integration.team_celery_app", "worker", "-E", "-Q", queues,
             "-P", pool, *extra, "--heartbeat-interval", "1", "-n", name, "--without-mingle", "--without-gossip",
             "-l", "INFO"], cwd=ROOT, env=self.env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        proc.log, proc.name = log, name
        self.workers.append(proc)
        return proc

    def wait_ready(self, proc: subprocess.Popen) -> None:
        wait_for(lambda: "ready." in proc.log.read_text(errors="replace"), 60, 0.2, what=f"{proc.name} ready")
        wait_for(lambda: proc.name in self.runner.watch.workers, 30, what=f"{proc.name}'s heartbeat seen")

    def send(self, name: str, *args, queue: str = "orders", **kwargs) -> str:
        return self.client.send_task(name, args=args, kwargs=kwargs, queue=queue, routing_key=queue).id

    def rows(self, sql: str, params=()) -> list[dict]:
        with psycopg.connect(self.database_url, row_factory=psycopg.rows.dict_row) as conn:
            return conn.execute(sql, params).fetchall()

    def task(self, task_id: str) -> dict | None:
        found = self.rows("SELECT * FROM celery_app_tasks WHERE task_id = %s", (task_id,))
        return found[0] if found else None

    def close(self) -> None:
        import gc

        gc.collect()   # results the client sent still unsubscribe from the result backend while its Redis runs
        self.stop_event.set()
        self.thread.join(10)
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.rt.db.close()
        self.redis.stop()
        drop_database_later(self.database_url)


@pytest.fixture(scope="session")
def team(tmp_path_factory):
    """Session-scoped, not module-scoped: xdist's loadgroup may run other modules' tests between these on the
    same worker, and a module fixture would then be torn down and rebuilt between two of them."""
    t = Team(tmp_path_factory.mktemp("team"))
    yield t
    t.close()


def test_a_failure_storm_is_one_incident_with_its_count_and_traceback(team):
    team.explode_before = sum(r["occurrences"] for r in team.rows(
        "SELECT occurrences FROM incidents WHERE labels->>'kind' = 'failure' AND labels->>'task' = 'orders.explode'"))
    ids = [team.send("orders.explode", n) for n in range(40)]

    def incident():
        found = team.rows("SELECT * FROM incidents WHERE labels->>'kind' = 'failure'"
                          " AND labels->>'task' = 'orders.explode'")
        return found if found and sum(i["occurrences"] for i in found) >= 40 + team.explode_before else None

    found = wait_for(incident, 30, what="the storm's incident")
    assert len(found) == 1 and found[0]["occurrences"] == 40 + team.explode_before
    details = found[0]["error_details"]["details"]
    assert details["exception"].endswith("PaymentDeclined")
    assert "team_celery_app:_validate" in details["in_app_frames"]
    assert "card declined for order" in details["traceback"] and 'in _validate' in details["traceback"]
    assert found[0]["service"] == "team" and team.handed.count(found[0]["id"]) <= 1
    rows = wait_for(lambda: [r for r in map(team.task, ids) if r and r["state"] == "FAILURE"] if all(
        (r := team.task(i)) and r["state"] == "FAILURE" for i in ids) else None, 10, what="the history rows")
    assert {r["worker"] for r in rows} == {"team1@test"} and rows[0]["args"] in {f"({n},)" for n in range(40)}

    from erdu_tasks.store import celery_apps as history

    with team.rt.db.transaction() as conn:
        hits = history.search(conn, history.TaskQuery(app="team", exception="PaymentDeclined", text="(17,)"))
    assert ids[17] in [h["task_id"] for h in hits] and all(h["args"] == "(17,)" for h in hits)


def test_a_failed_task_retried_through_the_api_runs_again_with_its_recorded_arguments(team):
    from fastapi.testclient import TestClient

    from erdu_tasks.api.app import create_app

    team.store.set("team:broken", "1")
    old = team.send("orders.charge", 7, 12.5, currency="USD")
    wait_for(lambda: (r := team.task(old)) and r["state"] == "FAILURE", 20, what="the charge failed")
    team.store.delete("team:broken")
    with TestClient(create_app(team.settings)) as api:
        r = api.post(f"/v1/celery-apps/team/tasks/{old}/retry", json={"by": "alice", "note": "card fixed"})
        assert r.status_code == 200, r.text
        new = r.json()["new_id"]
        assert r.json()["args"] == [7, 12.5] and r.json()["kwargs"] == {"currency": "USD"}
        again = api.post(f"/v1/celery-apps/team/tasks/{old}/retry", json={"by": "bob"})
        assert again.status_code == 409 and "already retried" in again.json()["detail"]
        done = wait_for(lambda: (r := team.task(new)) and r["state"] == "SUCCESS" and r, 20, what="the retry ran")
        assert done["retried_from"] == old and team.task(old)["retried_as"] == new
        calls = [json.loads(c) for c in team.store.lrange("team:calls", 0, -1)]
        assert calls[-2:] == [[7, 12.5, "USD"], [7, 12.5, "USD"]]
        audit = api.get("/v1/celery-apps/actions", params={"app": "team"}).json()["actions"]
        assert [(a["by"], a["ok"]) for a in audit[:2]] == [("bob", False), ("alice", True)]
        listed = api.get("/v1/celery-apps/tasks", params={"app": "team", "text": "USD"}).json()["tasks"]
        assert {t["task_id"] for t in listed} == {old, new}


def test_a_bulk_retry_through_the_api_runs_each_failed_task_once_at_its_rate_and_leaves_the_others(team):
    from fastapi.testclient import TestClient

    from erdu_tasks.api.app import create_app

    team.store.set("team:broken", "1")
    marker = 5000 + time.monotonic_ns() % 1000   # this test's orders, apart from every other test's
    failed = [team.send("orders.charge", marker + n, 1.5, currency="BULK") for n in range(3)]
    other = team.send("orders.explode", marker)   # failed too, another task: not in the filter
    wait_for(lambda: all((r := team.task(i)) and r["state"] == "FAILURE" for i in [*failed, other]), 20,
             what="the four failures")
    team.store.delete("team:broken")
    with TestClient(create_app(team.settings)) as api:
        started = time.monotonic()
        r = api.post("/v1/celery-apps/retry", json={"app": "team", "name": "orders.charge", "text": "BULK",
                                                   "rate": 4, "by": "alice", "note": "provider back"})
        took = time.monotonic() - started
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert sorted(x["task_id"] for x in results) == sorted(failed) and all(x["retried"] for x in results)
        assert took >= 2 / 4 * 0.9, took   # three sends at 4 per second: at least two gaps of a quarter second
        again = api.post("/v1/celery-apps/retry", json={"app": "team", "name": "orders.charge", "text": "BULK",
                                                       "by": "bob"}).json()["results"]
        assert again == []   # each was retried once; nothing is sent twice
    news = [x["new_id"] for x in results]
    done = wait_for(lambda: all((t := team.task(n)) and t["state"] == "SUCCESS" for n in news), 20,
                    what="the three retries ran")
    assert done and team.task(other)["retried_as"] is None
    calls = [json.loads(c) for c in team.store.lrange("team:calls", 0, -1)]
    assert sorted(c[0] for c in calls if c[2] == "BULK") == sorted([marker + n for n in range(3)] * 2)


def _step(action: str, **params):
    from erdu_tasks.fixer.actions import run_step
    from erdu_tasks.fixer.runbooks import Step

    return run_step(Step(action=action, params=params, timeout=10), {})


def test_a_stalled_consumer_is_detected_within_its_threshold_and_the_runbook_actions_heal_it(team):
    cancel = _step("celery_control", broker_url=team.broker_url, command="cancel_consumer", queue="mail",
                   destination=["team1@test"])
    assert cancel.ok, cancel.detail
    started = time.monotonic()
    for n in range(3):
        team.send("orders.nap", 0, queue="mail")

    def stalled():
        return team.rows("SELECT * FROM incidents WHERE labels->>'kind' = 'stalled' AND status <> 'resolved'")

    found = wait_for(stalled, 15, what="the stall incident")
    took = time.monotonic() - started
    assert took < 2 + 3.5, f"stall seen after {took:.1f} s (threshold 2 s)"
    assert found[0]["labels"]["queue"] == "mail" and "stalled" in found[0]["title"]
    refused = _step("celery_control", broker_url=team.broker_url, command="pool_restart", destination=["team1@test"])
    assert not refused.ok and "team1@test" in refused.detail   # the worker was not started with pool restarts
    moved = _step("celery_queue", broker_url=team.broker_url, op="move", queue="mail", to_queue="parked")
    assert moved.ok and moved.output["moved"] == 3 and team.store.llen("parked") == 3
    assert _step("celery_queue", broker_url=team.broker_url, op="move", queue="parked", to_queue="mail").ok
    added = _step("celery_control", broker_url=team.broker_url, command="add_consumer", queue="mail",
                  destination=["team1@test"])
    assert added.ok, added.detail
    wait_for(lambda: team.store.llen("mail") == 0, 15, what="the queue drained once consumed again")
    team.store.lpush("parked", "x", "y")
    purged = _step("celery_queue", broker_url=team.broker_url, op="purge", queue="parked")
    assert purged.ok and purged.output["purged"] == 2 and team.store.llen("parked") == 0


def _workflow_incident(team, step: str, after: str, task: str) -> dict | None:
    found = team.rows("SELECT * FROM incidents WHERE labels->>'kind' = 'workflow' AND labels->>'step' = %s"
                      " AND labels->>'after' = %s AND labels->>'task' = %s", (step, after, task))
    return found[0] if found else None


def test_a_chain_step_a_chord_body_and_a_follower_that_never_ran_are_workflow_incidents(team):
    sig = team.client.signature
    # The healthy ones first: their deadlines pass before the broken ones', so had they counted, the
    # broken ones' incidents (one per kind, step and task) would show more than one occurrence.
    healthy = [(sig("orders.pack", args=(1,), queue="orders") | sig("orders.ship", queue="orders")).apply_async(),
               team.client.send_task("orders.label", args=(2,), queue="orders", link=sig("orders.ship", queue="orders")),
               (sig("orders.label", args=(3,), queue="orders") | sig("orders.ship", queue="orders")).apply_async()]
    from celery import chord

    healthy.append(chord([sig("orders.pack", args=(n,), queue="orders") for n in range(3)],
                         sig("orders.total", queue="orders")).apply_async())
    def succeeded(task_id: str) -> bool:
        return bool((r := team.task(task_id)) and r["state"] == "SUCCESS")

    link_child = "SELECT 1 FROM celery_app_tasks WHERE parent_id = %s AND name = 'orders.ship' AND state = 'SUCCESS'"
    wait_for(lambda: all(succeeded(r.id) for r in (healthy[0], healthy[2], healthy[3]))
             and team.rows(link_child, (healthy[1].id,)), 30, what="the healthy workflows ran to their last step")
    # A chain's next step and a chord's body sent where no worker consumes (as a wrong route does), and a
    # task whose follower is never sent at all.
    broken_chain = (sig("orders.pack", args=(4,), queue="orders") | sig("orders.ship", queue="nowhere")).apply_async()
    broken_chord = chord([sig("orders.pack", args=(n,), queue="orders") for n in range(5, 8)],
                         sig("orders.total", queue="nowhere")).apply_async()
    alone = team.send("orders.label", 9)

    chain_incident = wait_for(lambda: _workflow_incident(team, "chain", "orders.pack", "orders.ship"), 30,
                              what="the broken chain's incident")
    chord_incident = wait_for(lambda: _workflow_incident(team, "chord", "orders.pack", "orders.total"), 30,
                              what="the broken chord's incident")
    follower = wait_for(lambda: _workflow_incident(team, "followed_by", "orders.label", "orders.ship"), 30,
                        what="the missing follower's incident")
    for incident in (chain_incident, chord_incident, follower):
        assert incident["occurrences"] == 1 and incident["service"] == "team" and incident["severity"] == "P2"
    details = chain_incident["error_details"]["details"]
    assert details["missing_task_ids"] == [broken_chain.id] and details["sent_not_received"] == [broken_chain.id]
    assert "sent but no worker received it" in chain_incident["description"]
    details = chord_incident["error_details"]["details"]
    assert details["missing_task_ids"] == [broken_chord.id] and len(details["groups"]) == 1
    assert "body of a chord" in chord_incident["description"]
    assert follower["error_details"]["details"]["after_task_ids"] == [alone]
    assert "never received" in follower["description"]


def test_a_retry_sends_the_exact_values_the_result_backend_holds_where_the_event_repr_was_cut(team):
    from fastapi.testclient import TestClient

    from erdu_tasks.api.app import create_app

    items = [{"sku": f"item-{n}", "qty": n} for n in range(200)]
    team.store.set("team:broken", "1")
    try:
        old = team.send("orders.batch", items)
        row = wait_for(lambda: (r := team.task(old)) and r["state"] == "FAILURE" and r["values_from"] and r, 20,
                       what="the batch failed and its values were read")
    finally:
        team.store.delete("team:broken")
    from erdu_tasks.tasks.celery_apps import RetryRefused, replayable

    assert "..." in row["args"] and len(row["args"]) < 2000   # Celery cuts the repr the events carry:
    with pytest.raises(RetryRefused, match="cut when recorded"):   # from it alone, no retry
        replayable({**row, "args_value": None, "kwargs_value": None})
    assert row["args_value"] == [items] and row["values_from"] == "result backend"
    with TestClient(create_app(team.settings)) as api:
        r = api.post(f"/v1/celery-apps/team/tasks/{old}/retry", json={"by": "alice"})
        assert r.status_code == 200, r.text
        assert r.json()["values_from"] == "result backend" and r.json()["args"] == [items]
        new = r.json()["new_id"]
    wait_for(lambda: (r := team.task(new)) and r["state"] == "SUCCESS", 20, what="the retry ran")
    calls = [json.loads(c) for c in team.store.lrange("team:calls", 0, -1)]
    assert calls.count(items) == 2


def test_history_survives_an_erdu_restart(team):
    from erdu_tasks.tasks.celery_apps import AppRunner

    ids = [team.send("orders.explode", 1000 + n) for n in range(3)]
    wait_for(lambda: all((r := team.task(i)) and r["state"] == "FAILURE" for i in ids), 20, what="three failures")
    team.stop_event.set()
    team.thread.join(10)
    from erdu_tasks.runtime import Runtime
    from erdu_tasks.store import celery_apps as history

    team.rt.db.close()
    team.rt = Runtime(team.settings)   # a new process's runtime: nothing kept but what Postgres holds
    with team.rt.db.transaction() as conn:
        rows = history.search(conn, history.TaskQuery(app="team", text="(100", limit=100))
    assert sorted(r["task_id"] for r in rows) == sorted(ids) and {r["state"] for r in rows} == {"FAILURE"}
    assert {r["args"] for r in rows} == {"(1000,)", "(1001,)", "(1002,)"} and rows[0]["traceback"]
    # A new watcher (as after a restart) goes on writing into the same history.
    team.stop_event = threading.Event()
    team.runner = AppRunner(team.rt, team.config, team.config.apps[0], host="test-host",
                            handed=lambda new, reassess: team.handed.extend(new), assess=team.handed.append,
                            resolved=lambda _id: None)
    team.thread = threading.Thread(target=team.runner.run, args=(team.stop_event,), kwargs={"tick": 0.1},
                                   daemon=True)
    team.thread.start()
    wait_for(team.runner.connected.is_set, 30, what="the new watcher subscribed")
    tid = team.send("orders.explode", 99)
    wait_for(lambda: (r := team.task(tid)) and r["state"] == "FAILURE", 20, what="a task after the restart")


def test_one_task_id_run_twice_by_the_app_s_worker_is_a_duplicate_incident(team):
    """A producer that publishes one task twice with the same id (a retried publish, a redelivery): the app's
    real worker runs it twice, and ERDU says so from the events alone."""
    before = team.rows("SELECT id FROM incidents WHERE labels->>'kind' = 'duplicate'")
    task_id = f"twice-{time.monotonic_ns()}"
    for _ in range(2):
        team.client.send_task("orders.nap", args=(0.05,), queue="orders", routing_key="orders", task_id=task_id)
    found = wait_for(lambda: team.rows("SELECT * FROM incidents WHERE labels->>'kind' = 'duplicate'"
                                       " AND error_details->'details'->'task_ids' ? %s", (task_id,)), 30,
                     what="the duplicate-run incident")
    assert found[0]["labels"]["task"] == "orders.nap" and "executed twice" in found[0]["title"]
    assert found[0]["id"] not in [b["id"] for b in before] or found[0]["occurrences"] > 1
    assert "team1@test" in found[0]["error_details"]["details"]["workers"]


def test_tasks_held_past_their_deadlines_are_overdue_not_started_and_not_finished(team):
    """A second watcher of the same app with deadlines of a second or two: two long tasks fill the worker's two
    threads and run past finish_within; a third waits in the worker's prefetch past start_within."""
    from erdu_tasks.runtime import Runtime
    from erdu_tasks.settings import load_settings
    from erdu_tasks.tasks.celery_apps import AppRunner

    section = json.loads(json.dumps(team.section))
    section["apps"][0].update(name="team-strict", thresholds={"offline_after": 30, "stall_for": 30,
                                                              "start_within": 1, "finish_within": 2})
    rt = Runtime(load_settings(database_url=team.database_url, redis_url=team.env["ERDU_REDIS_URL"],
                               monitors={"celery_apps": section}))
    config = rt.monitors.celery_apps
    runner = AppRunner(rt, config, config.apps[0], host="test-host", handed=lambda new, reassess: None,
                       assess=lambda _id: None, resolved=lambda _id: None)
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), kwargs={"tick": 0.1}, daemon=True)
    thread.start()
    try:
        wait_for(runner.connected.is_set, 30, what="the strict watcher subscribed")
        long_ones = [team.send("orders.nap", 4) for _ in range(2)]
        waiting = team.send("orders.nap", 0.01)

        def overdue(phase: str) -> list[dict]:
            return team.rows("SELECT * FROM incidents WHERE labels->>'app' = 'team-strict'"
                             " AND labels->>'kind' = 'overdue' AND labels->>'phase' = %s", (phase,))

        late = wait_for(lambda: overdue("not-finished"), 30, what="the long tasks overdue")
        waited = wait_for(lambda: overdue("not-started"), 30, what="the waiting task overdue")
        assert set(late[0]["error_details"]["details"]["task_ids"]) <= set(long_ones)
        assert waiting in waited[0]["error_details"]["details"]["task_ids"]
        assert waited[0]["error_details"]["details"]["within_seconds"] == 1
        assert late[0]["error_details"]["details"]["within_seconds"] == 2 and "not finished" in late[0]["title"]
        wait_for(lambda: all((r := team.task(i)) and r["state"] == "SUCCESS" for i in [*long_ones, waiting]), 30,
                 what="the worker idle again for the next test")
    finally:
        stop.set()
        thread.join(10)
        rt.db.close()


def test_the_fixer_s_celery_control_action_grows_and_shrinks_a_prefork_pool(team):
    """pool_grow and pool_shrink sent by the runbook action to a prefork worker of the app: the worker's own
    stats (Celery's inspect) show the new pool size each time; a command to a worker that is not there fails."""
    from celery import Celery

    worker = team.start_worker("grower@test", "grow", "prefork", "-c", "1")
    try:
        team.wait_ready(worker)
        inspector = Celery("team-inspect", broker=team.broker_url).control

        def processes() -> int | None:
            stats = inspector.inspect(destination=["grower@test"], timeout=2).stats() or {}
            pool = (stats.get("grower@test") or {}).get("pool") or {}
            return len(pool.get("processes") or []) or None

        assert wait_for(processes, 20, what="the pool's size") == 1
        grown = _step("celery_control", broker_url=team.broker_url, command="pool_grow", n=2,
                      destination=["grower@test"])
        assert grown.ok, grown.detail
        wait_for(lambda: processes() == 3, 20, what="three pool processes")
        shrunk = _step("celery_control", broker_url=team.broker_url, command="pool_shrink", n=1,
                       destination=["grower@test"])
        assert shrunk.ok, shrunk.detail
        wait_for(lambda: processes() == 2, 20, what="two pool processes")
        nobody = _step("celery_control", broker_url=team.broker_url, command="pool_grow", n=1,
                       destination=["nobody@test"], reply_timeout=1)
        assert not nobody.ok
    finally:
        os.killpg(worker.pid, signal.SIGTERM)   # a warm shutdown: the worker says it leaves
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        team.workers.remove(worker)


def test_a_worker_killed_mid_task_is_offline_and_its_task_lost(team):
    doomed = team.start_worker("doomed@test", "naps", "threads", "-c", "1")   # its own worker: the shared one lives on
    team.wait_ready(doomed)
    tid = team.send("orders.nap", 60, queue="naps")
    wait_for(lambda: (r := team.task(tid)) and r["state"] == "STARTED", 20, what="the nap started")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(10)
    found = wait_for(lambda: team.rows("SELECT * FROM incidents WHERE labels->>'kind' = 'offline'"
                                       " AND labels->>'worker' = 'doomed@test'"), 20, what="the offline incident")
    assert tid in found[0]["error_details"]["lost_tasks"]
    wait_for(lambda: team.task(tid)["state"] == "LOST", 10, what="the task marked lost")
    assert team.rows("SELECT state FROM celery_app_workers WHERE hostname = 'doomed@test'")[0]["state"] == "lost"


def test_the_cli_refuses_to_retry_a_task_that_succeeded_and_says_why(team):
    ok = team.send("orders.charge", 8, 1.0)
    wait_for(lambda: (r := team.task(ok)) and r["state"] == "SUCCESS", 20, what="the charge succeeded")
    out = subprocess.run([sys.executable, "-m", "erdu_tasks.cli", "celery-apps", "retry", "team", ok, "--yes",
                          "--by", "carol"], env=team.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "is SUCCESS; only FAILURE, LOST tasks" in " ".join(out.stderr.split())
    assert "orders.charge" in out.stdout and '[8, 1.0]' in out.stdout
    audit = team.rows("SELECT * FROM celery_app_actions WHERE by = 'carol'")
    assert len(audit) == 1 and not audit[0]["ok"] and audit[0]["target"] == ok


def test_history_older_than_the_retention_is_pruned_and_newer_rows_are_kept(database_url):
    from erdu_tasks.store import celery_apps as history
    from erdu_tasks.store.db import Database

    db = Database(database_url)
    try:
        with db.transaction() as conn:
            history.upsert_tasks(conn, "prune-app", [{"task_id": "old", "name": "t", "state": "SUCCESS"},
                                                     {"task_id": "new", "name": "t", "state": "FAILURE"}])
            conn.execute("UPDATE celery_app_tasks SET updated_at = now() - interval '15 days'"
                         " WHERE app = 'prune-app' AND task_id = 'old'")
            assert history.prune(conn, 14) == 1
            left = history.search(conn, history.TaskQuery(app="prune-app"))
        assert [r["task_id"] for r in left] == ["new"]
    finally:
        db.close()


def test_only_json_result_backend_entries_of_the_same_task_with_args_and_kwargs_are_taken(team):
    from erdu_tasks.monitors import celery_events

    app = team.config.apps[0]
    backend = celery_events.backend_client(app)
    good = {"status": "FAILURE", "task_id": "good", "name": "orders.batch", "args": [[1, {"a": None}]],
            "kwargs": {"currency": "EUR"}}
    entries = {
        "good": json.dumps(good),
        "pickled": b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x04args\x94]\x94s.",
        "plain": json.dumps({"status": "FAILURE", "result": "boom"}),        # result_extended off
        "nan": '{"args": [NaN], "kwargs": {}}',
        "nul": '{"args": ["a\\u0000b"], "kwargs": {}}',
        "other": json.dumps({**good, "task_id": "other", "name": "orders.charge"}),
        "elsewhere": json.dumps({**good, "task_id": "someone-else"}),
        "huge": json.dumps({**good, "task_id": "huge", "args": ["x" * 1_100_000]}),
        "deep": "[" * 200_000,
        "wrong-shape": json.dumps({**good, "task_id": "wrong-shape", "args": {"a": 1}}),
    }
    for key, value in entries.items():
        backend.set(f"{app.result_key_prefix}{key}", value)
    found = celery_events.recorded_values(backend, app, [(k, "orders.batch") for k in entries] + [("missing", None)])
    assert found == {"good": (good["args"], good["kwargs"])}
