"""The pipeline end to end: real Redis, real Postgres, one real worker process per role."""

from __future__ import annotations

import json
import threading

import pytest

from tests.conftest import NOOP_RUNBOOK, drop_the_hand_on, incident_rows, wait_for

# The module shares one stack (or server) between its tests: pytest-xdist keeps them on one worker.
# Only the tests on the module's one shared stack run on one xdist worker (so it is started once); the
# tests with a stack of their own spread over the workers.
SHARED = pytest.mark.xdist_group("pipeline-stack")



@pytest.fixture()
def stack(stack_factory, tmp_path):
    """A stack of the test's own: for tests that kill or add workers."""
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    (runbooks / "db.yaml").write_text(NOOP_RUNBOOK)
    s = stack_factory({"ERDU_RUNBOOKS_DIR": str(runbooks)})
    # The roles these tests stop and start again run alone; the rest share one process.
    s.start_all(separate=("commander", "diagnostician"))
    return s


@pytest.fixture(scope="module")
def module_stack(module_stack_factory, tmp_path_factory):
    runbooks = tmp_path_factory.mktemp("runbooks")
    (runbooks / "db.yaml").write_text(NOOP_RUNBOOK)
    s = module_stack_factory({"ERDU_RUNBOOKS_DIR": str(runbooks)})
    s.start_all()
    return s


@pytest.fixture()
def shared_stack(module_stack):
    """The module's one five-worker stack, settled and emptied before the test (for tests that kill nothing)."""
    module_stack.clear()
    return module_stack


def status_of(stack, incident_id):
    rows = incident_rows(stack.database_url, "SELECT status FROM incidents WHERE id = %s", (incident_id,))
    return rows[0]["status"] if rows else None


def only_incident(stack):
    rows = wait_for(lambda: incident_rows(stack.database_url), 30, what="an incident row")
    assert len(rows) == 1, rows
    return rows[0]


@SHARED
def test_an_event_from_a_plain_celery_client_becomes_a_closed_incident_with_reports(shared_stack):
    stack = shared_stack
    stack.send_event({"message": "Database connection failed: too many clients", "service": "orders",
                      "source": "test"})
    incident = only_incident(stack)
    wait_for(lambda: status_of(stack, incident["id"]) == "closed", 60, what="closed")
    rows = incident_rows(stack.database_url, "SELECT * FROM incidents WHERE id = %s", (incident["id"],))
    closed = rows[0]
    assert closed["severity"] == "P1"
    timeline = incident_rows(stack.database_url,
                             "SELECT actor, worker, to_status FROM incident_timeline WHERE incident_id = %s ORDER BY id",
                             (incident["id"],))
    by_role = {}
    for t in timeline:
        if t["to_status"]:
            by_role.setdefault(t["actor"], []).append(t)
    for role in ("commander", "diagnostician", "fixer", "resolver"):
        assert role in by_role, f"no transition by {role}: {timeline}"
        # Each transition was made by a worker serving that role (`role@host/pid`, or `a+b+...@host/pid`).
        assert all(role in t["worker"].split("@")[0].split("+") for t in by_role[role]), by_role[role]
    assert [t["to_status"] for t in timeline if t["to_status"]] == [
        "assigned", "investigating", "fixing", "resolved", "closed"]
    md = (stack.reports / f"{incident['id']}.md").read_text()
    data = json.loads((stack.reports / f"{incident['id']}.json").read_text())
    for text in (md, json.dumps(data)):
        assert incident["id"] in text
        assert "P1" in text
        assert "dead connections" in text  # the root cause from the runbook's diagnosis hint
    assert data["root_cause"] == "The database connection pool holds dead connections."


def test_a_repeat_while_open_raises_occurrences_and_starts_no_second_chain(stack):
    stack.kill("commander")  # keep the first incident open
    stack.send_event({"message": "Payment processor error code 17", "service": "pay"})
    first = only_incident(stack)
    stack.send_event({"message": "Payment processor error code 17", "service": "pay"})
    wait_for(lambda: incident_rows(stack.database_url)[0]["occurrences"] == 2, 30, what="occurrences 2")
    stack.start("commander")
    wait_for(lambda: status_of(stack, first["id"]) == "closed" or status_of(stack, first["id"]) == "escalated",
             60, what="end of chain")
    assert len(incident_rows(stack.database_url)) == 1
    assessed = incident_rows(stack.database_url, "SELECT count(*) AS n FROM incident_timeline"
                             " WHERE incident_id = %s AND actor = 'commander'", (first["id"],))
    assert assessed[0]["n"] == 1


def test_two_ingest_workers_racing_on_200_copies_make_one_incident(stack):
    stack.start("ingest")  # a second ingest worker process
    stack.kill("commander")
    event = {"message": "Queue overflowing on node 7", "service": "jobs"}
    failures = []

    def send_50():
        try:
            for _ in range(50):
                stack.send_event(event)
        except Exception as exc:   # a producer thread that dies must fail the test, not lose its events quietly
            failures.append(exc)

    threads = [threading.Thread(target=send_50) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    wait_for(lambda: sum(r["occurrences"] for r in incident_rows(stack.database_url)) == 200, 60,
             what="200 occurrences")
    rows = incident_rows(stack.database_url)
    assert len(rows) == 1 and rows[0]["occurrences"] == 200


@SHARED
def test_a_failing_stage_escalates_with_the_reason_and_a_record(shared_stack):
    stack = shared_stack
    stack.send_event({"message": "Unfixable widget error", "service": "widgets"})
    incident = only_incident(stack)
    wait_for(lambda: status_of(stack, incident["id"]) == "escalated", 60, what="escalated")
    timeline = incident_rows(stack.database_url, "SELECT what FROM incident_timeline WHERE incident_id = %s",
                             (incident["id"],))
    assert any("always-broken" in t["what"] and "escalated" in t["what"] for t in timeline), timeline
    records = incident_rows(stack.database_url, "SELECT * FROM escalations WHERE incident_id = %s",
                            (incident["id"],))
    assert len(records) == 1 and records[0]["stage"] == "fix"


def test_a_stage_task_that_raises_goes_to_the_escalate_errback(stack):
    stack.kill("diagnostician")
    stack.send_event({"message": "Database connection failed again", "service": "orders"})
    incident = only_incident(stack)
    wait_for(lambda: status_of(stack, incident["id"]) == "assigned", 30, what="assigned")
    drop_the_hand_on(stack.redis_url, "diagnostician", incident["id"])   # only the failing call will run
    stack.client.send_task("erdu.diagnose", args=(incident["id"], "unexpected-extra-arg"), queue="diagnostician")
    stack.start("diagnostician")
    wait_for(lambda: status_of(stack, incident["id"]) == "escalated", 60, what="escalated by errback")
    timeline = incident_rows(stack.database_url, "SELECT actor, what FROM incident_timeline WHERE incident_id = %s",
                             (incident["id"],))
    assert any(t["actor"] == "escalation" and "TypeError" in t["what"] for t in timeline), timeline
    assert incident_rows(stack.database_url, "SELECT count(*) AS n FROM escalations WHERE incident_id = %s",
                         (incident["id"],))[0]["n"] == 1
    failed = incident_rows(stack.database_url, "SELECT * FROM failed_tasks WHERE incident_id = %s", (incident["id"],))
    assert failed and failed[0]["task_name"] == "erdu.diagnose" and failed[0]["stage"] == "diagnose"


def test_a_redelivered_stage_changes_nothing_and_hands_on_once(stack):
    stack.kill("diagnostician")
    stack.send_event({"message": "Database connection failed on replica", "service": "orders"})
    incident = only_incident(stack)
    wait_for(lambda: status_of(stack, incident["id"]) == "assigned", 30, what="assigned")
    import redis

    r = redis.Redis.from_url(stack.redis_url)
    wait_for(lambda: r.llen("diagnostician") == 1, 10, what="the one hand-off (published after commit)")
    # Deliver the commander's stage again, twice, with one task id: it must not act or hand on again.
    for _ in range(2):
        stack.client.send_task("erdu.assess", args=(incident["id"],), queue="commander", task_id="same-task-id")
    # Late acks: a delivery leaves the "unacked" hash only when its task has run to the end.
    wait_for(lambda: r.llen("commander") == 0 and r.hlen("unacked") == 0, 30,
             what="both deliveries run and acknowledged")
    assert r.llen("diagnostician") == 1
    timeline = incident_rows(stack.database_url, "SELECT actor FROM incident_timeline WHERE incident_id = %s",
                             (incident["id"],))
    assert [t["actor"] for t in timeline].count("commander") == 1


@pytest.mark.parametrize("payload", [
    {"service": "x"},                          # no message
    {"message": 42, "count": "many"},          # wrong types
    "this is not json {",                      # not JSON
    [],                                        # empty batch
    {"message": "ok", "surprise": True},       # unknown field
])
@SHARED
def test_a_malformed_event_is_rejected_recorded_and_the_worker_keeps_serving(shared_stack, payload):
    stack = shared_stack
    stack.send_event(payload)
    rejected = wait_for(lambda: incident_rows(stack.database_url, "SELECT * FROM rejected_events"), 30,
                        what="rejected event")
    assert rejected[0]["error"].startswith(("invalid event", "event body is not JSON", "empty batch"))
    assert incident_rows(stack.database_url) == []
    stack.send_event({"message": "Timeout error talking to inventory", "service": "shop"})
    wait_for(lambda: incident_rows(stack.database_url), 30, what="next event processed")
