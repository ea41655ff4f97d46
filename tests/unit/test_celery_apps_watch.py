"""The Celery app watcher's decisions, fed events by hand (no broker): grouping, doubled runs, overdue tasks,
lost workers, stalls, backlogs, and which recorded arguments may be sent again."""

from __future__ import annotations

import pytest

from erdu_tasks.monitors.celery_apps import AppWatch, NotReplayable, drain_estimate, in_app_frames, recorded_value
from erdu_tasks.settings.celery_apps import CeleryApp, CeleryAppsConfig

TB = '''Traceback (most recent call last):
  File "/srv/venv/lib/python3.11/site-packages/celery/app/trace.py", line 453, in trace_task
    R = retval = fun(*args, **kwargs)
  File "/srv/shop/orders.py", line {line}, in charge
    _validate(order)
  File "/srv/shop/orders.py", line 20, in _validate
    raise PaymentDeclined(f"card declined for order {{order}}")
shop.errors.PaymentDeclined: card declined for order {order}
'''


def app(**kw) -> CeleryApp:
    return CeleryApp(name="shop", broker_url="redis://127.0.0.1:1/0", queues=["orders"], in_app=["shop"], **kw)


def failed(w: AppWatch, tid: str, order: int, line: int = 10, now: float = 100.0) -> None:
    w.feed({"type": "task-received", "uuid": tid, "name": "shop.charge", "args": f"({order},)", "kwargs": "{}",
            "hostname": "w1"}, now)
    w.feed({"type": "task-started", "uuid": tid, "hostname": "w1"}, now)
    w.feed({"type": "task-failed", "uuid": tid, "hostname": "w1", "exception": f"PaymentDeclined('card {order}')",
            "traceback": TB.format(line=line, order=order)}, now)


def test_failures_fold_by_task_exception_and_in_app_frames_not_by_line_or_message():
    w = AppWatch(app())
    for n in range(50):
        failed(w, f"t{n}", n, line=10 + n % 3)
    events = w.take_events()
    assert len(events) == 1 and events[0].count == 50
    assert events[0].details["in_app_frames"] == ["orders:charge", "orders:_validate"]
    assert events[0].labels["exception"] == "shop.errors.PaymentDeclined"
    assert len(w.take_rows()) == 50 and w.take_events() == []


def test_in_app_frames_without_prefixes_are_those_outside_libraries():
    assert in_app_frames(TB.format(line=1, order=1), []) == ["orders:charge", "orders:_validate"]


def test_a_task_started_again_after_it_ran_is_executed_twice_but_a_retry_is_not():
    w = AppWatch(app())
    failed(w, "a", 1)
    w.feed({"type": "task-started", "uuid": "a", "hostname": "w2"}, 101)
    w.feed({"type": "task-received", "uuid": "b", "name": "shop.charge", "hostname": "w1"}, 101)
    w.feed({"type": "task-started", "uuid": "b", "hostname": "w1"}, 101)
    w.feed({"type": "task-retried", "uuid": "b", "hostname": "w1", "exception": "Retry()"}, 101)
    w.feed({"type": "task-started", "uuid": "b", "hostname": "w1"}, 102)
    kinds = sorted(e.labels["kind"] for e in w.take_events())
    assert kinds == ["duplicate", "failure"]


def test_one_id_received_and_run_again_after_it_succeeded_is_executed_twice_but_a_retry_redelivered_is_not():
    w = AppWatch(app())
    for _ in range(2):   # a producer that published one id twice: each message is received, then run
        w.feed({"type": "task-received", "uuid": "d", "name": "shop.charge", "hostname": "w1"}, 100)
        w.feed({"type": "task-started", "uuid": "d", "hostname": "w1"}, 100)
        w.feed({"type": "task-succeeded", "uuid": "d", "hostname": "w1"}, 100)
    w.feed({"type": "task-received", "uuid": "r", "name": "shop.charge", "hostname": "w1"}, 100)
    w.feed({"type": "task-started", "uuid": "r", "hostname": "w1"}, 100)
    w.feed({"type": "task-retried", "uuid": "r", "hostname": "w1", "exception": "Retry()"}, 100)
    w.feed({"type": "task-received", "uuid": "r", "name": "shop.charge", "hostname": "w1"}, 101)   # the retry's message
    w.feed({"type": "task-started", "uuid": "r", "hostname": "w1"}, 101)
    duplicates = [e for e in w.take_events() if e.labels["kind"] == "duplicate"]
    assert len(duplicates) == 1 and duplicates[0].details["task_ids"] == ["d"]


def test_received_tasks_not_started_in_time_are_overdue_once():
    w = AppWatch(app(thresholds={"start_within": 10}))
    w.feed({"type": "task-received", "uuid": "x", "name": "shop.mail", "hostname": "w1"}, 100)
    assert w.check(105, {}).events == []
    late = w.check(111, {}).events
    assert len(late) == 1 and late[0].details["task_ids"] == ["x"] and late[0].labels["phase"] == "not-started"
    assert w.check(130, {}).events == []


def test_a_silent_worker_is_lost_with_its_running_tasks():
    w = AppWatch(app(thresholds={"offline_after": 5}))
    w.feed({"type": "worker-online", "hostname": "w1", "active": 0}, 100)
    w.feed({"type": "task-received", "uuid": "r", "name": "shop.nap", "hostname": "w1"}, 100)
    w.feed({"type": "task-started", "uuid": "r", "hostname": "w1"}, 100)
    assert not [o for o in w.check(104, {}).observations if o.failing]
    down = [o for o in w.check(106, {}).observations if o.key.endswith(":worker:w1")]
    assert down[0].failing and down[0].data["lost_tasks"] == ["r"]
    assert w.take_rows()[0]["state"] == "LOST"


def test_a_queue_not_shrinking_while_every_worker_idles_is_stalled_and_work_in_progress_is_not():
    w = AppWatch(app())
    w.feed({"type": "worker-heartbeat", "hostname": "w1", "active": 0}, 100)
    w.check(100, {"orders": 5})
    stall = [o for o in w.check(101, {"orders": 5}).observations if ":stall:" in o.key]
    assert stall[0].failing
    w.feed({"type": "worker-heartbeat", "hostname": "w1", "active": 1}, 101.5)
    stall = [o for o in w.check(102, {"orders": 6}).observations if ":stall:" in o.key]
    assert not stall[0].failing


def test_a_backlog_growing_faster_than_it_drains_carries_its_drain_estimate():
    w = AppWatch(app(thresholds={"backlog_window": 10, "backlog_min": 10}))
    w.feed({"type": "worker-heartbeat", "hostname": "w1", "active": 2}, 100)
    obs = []
    for i in range(11):
        for n in range(2):   # two tasks end per second
            tid = f"{i}-{n}"
            w.feed({"type": "task-started", "uuid": tid, "hostname": "w1"}, 100 + i)
            w.feed({"type": "task-succeeded", "uuid": tid, "hostname": "w1"}, 100 + i)
        obs = w.check(100 + i, {"orders": 100 + 5 * i}).observations
    backlog = next(o for o in obs if ":backlog:" in o.key)
    assert backlog.failing and backlog.data["growth_per_second"] == 5.0
    assert backlog.data["drain_seconds"] is None and backlog.data["drain_seconds_if_inflow_stops"] > 0
    assert drain_estimate(100, inflow=1.0, drain=3.0)["drain_seconds"] == 50.0


@pytest.mark.parametrize("text, kind, value", [
    ("(1, 'a', [2.5, None, True])", "args", [1, "a", [2.5, None, True]]),
    ("{'order': 7, 'tags': ('x',)}", "kwargs", {"order": 7, "tags": ["x"]}),
    ("", "args", []),
])
def test_plain_literal_reprs_are_recovered(text, kind, value):
    assert recorded_value(text, kind=kind) == value


@pytest.mark.parametrize("text, why", [
    ("(<Order object at 0x7f>,)", "not a plain literal"),
    ("(__import__('os').system('id'),)", "not a plain literal"),
    ("([1, 2, 3, ...],)", "cut when recorded"),
    ("({1, 2},)", "set"),
    ("(b'raw',)", "bytes"),
    ("(float('nan'),)", "not a plain literal"),
    ("{1: 'a'}", "non-string key"),
    ("'x' * 10", "not a plain literal"),
])
def test_reprs_that_are_not_plain_literals_are_refused_with_the_reason(text, why):
    kind = "kwargs" if text.startswith("{") else "args"
    with pytest.raises(NotReplayable, match=why):
        recorded_value(text, kind=kind)


def test_hostile_events_are_skipped_not_fatal():
    w = AppWatch(app())
    for ev in ({"type": 5}, {"type": "task-failed", "uuid": ["x"]}, {"type": "task-started", "uuid": "u" * 300},
               {"type": "worker-heartbeat"}, {"type": "nonsense"}, "not a dict"):
        w.feed(ev, 1.0)   # type: ignore[arg-type]
    w.feed({"type": "task-failed", "uuid": "n", "exception": "E\x00vil", "traceback": 7}, 1.0)
    assert w.skipped == 6 and "\x00" not in w.take_rows()[0]["error"]


def test_the_section_refuses_duplicate_apps_and_non_redis_brokers():
    with pytest.raises(ValueError, match="repeated: a"):
        CeleryAppsConfig(apps=[{"name": "a", "broker_url": "redis://x"}, {"name": "a", "broker_url": "redis://y"}])
    with pytest.raises(ValueError, match="only Redis brokers"):
        CeleryApp(name="a", broker_url="amqp://x")


def test_a_worker_a_previous_watcher_saw_online_is_lost_if_it_stays_silent_after_a_restart():
    w = AppWatch(app(thresholds={"offline_after": 5}))
    w.restore_workers([{"hostname": "w1", "state": "online", "processed": 3},
                       {"hostname": "w2", "state": "lost"}], now=100)
    assert set(w.workers) == {"w1"}
    assert not [o for o in w.check(104, {}).observations if o.failing]
    assert [o.key for o in w.check(106, {}).observations if o.failing] == ["celeryapp:shop:worker:w1"]


def test_a_stream_of_endless_new_workers_and_exception_types_stays_bounded():
    from erdu_tasks.monitors import celery_apps as watch

    w = AppWatch(app())
    for n in range(watch.MAX_WORKERS + 50):
        w.feed({"type": "worker-heartbeat", "hostname": f"w{n}"}, 1.0)
    for n in range(watch.MAX_GROUPS + 50):
        w.feed({"type": "task-failed", "uuid": f"t{n}", "name": f"task{n}", "exception": f"E{n}()"}, 1.0)
    events = w.take_events()
    assert len(w.workers) == watch.MAX_WORKERS and w.skipped == 50
    assert len(events) == watch.MAX_GROUPS + 1 and sum(e.count for e in events) == watch.MAX_GROUPS + 50


def test_a_periodic_task_received_twice_within_half_its_period_is_scheduled_twice():
    w = AppWatch(app(periodic={"shop.refresh": 60}))
    for tid, ts in (("a", 100.0), ("b", 160.0), ("c", 160.4), ("d", 220.0)):
        w.feed({"type": "task-received", "uuid": tid, "name": "shop.refresh", "hostname": "w1", "timestamp": ts}, ts)
    events = w.take_events()
    assert [(e.labels["kind"], e.count) for e in events] == [("double_schedule", 1)]
    assert events[0].details["task_ids"][:2] == ["b", "c"] and "two beats" in events[0].message


# --------------------------------------------------------------------------- workflows


def _ran(w: AppWatch, tid: str, name: str, now: float, *, parent: str | None = None, ok: bool = True,
         steps: list | None = None, announce_after: bool = False) -> None:
    """One task received, started and ended on w1; `steps` announced as it starts (or after it ended)."""
    w.feed({"type": "task-received", "uuid": tid, "name": name, "hostname": "w1", "parent_id": parent}, now)
    w.feed({"type": "task-started", "uuid": tid, "hostname": "w1"}, now)
    announcement = {"type": "task-next-steps", "uuid": tid, "hostname": "w1", "steps": steps}
    if steps is not None and not announce_after:
        w.feed(announcement, now)
    w.feed({"type": "task-succeeded" if ok else "task-failed", "uuid": tid, "hostname": "w1",
            "exception": None if ok else "ValueError('x')"}, now)
    if steps is not None and announce_after:
        w.feed(announcement, now)


def _workflow_events(w: AppWatch, now: float) -> list:
    return [e for e in w.check(now, {}).events if e.labels["kind"] == "workflow"]


def test_a_chain_step_not_received_within_next_within_is_one_event_and_an_arrived_one_is_none():
    w = AppWatch(app(thresholds={"next_within": 10}))
    for n in range(3):
        _ran(w, f"a{n}", "shop.pack", 100, steps=[{"kind": "chain", "id": f"b{n}", "name": "shop.ship"}])
    w.feed({"type": "task-received", "uuid": "b0", "name": "shop.ship", "hostname": "w1", "parent_id": "a0"}, 101)
    w.feed({"type": "task-sent", "uuid": "b1", "name": "shop.ship", "queue": "wrong"}, 101)
    assert _workflow_events(w, 109) == []                 # not yet due
    events = _workflow_events(w, 111)
    assert len(events) == 1 and events[0].count == 2 and events[0].labels["step"] == "chain"
    assert events[0].details["missing_task_ids"] == ["b1", "b2"] and events[0].details["sent_not_received"] == ["b1"]
    assert "never received" in events[0].message         # one of the two was never sent at all
    assert _workflow_events(w, 200) == []                 # reported once


def test_a_next_step_received_before_its_predecessor_s_success_or_announcement_is_not_missing():
    w = AppWatch(app(thresholds={"next_within": 10}))
    w.feed({"type": "task-received", "uuid": "b", "name": "shop.ship", "hostname": "w1", "parent_id": "a"}, 100)
    _ran(w, "a", "shop.pack", 100, steps=[{"kind": "chain", "id": "b", "name": "shop.ship"}], announce_after=True)
    _ran(w, "c", "shop.pack", 100, steps=[{"kind": "chain", "id": "d", "name": "shop.ship"}], announce_after=True)
    events = _workflow_events(w, 120)
    assert [e.details["missing_task_ids"] for e in events] == [["d"]]   # the late announcement still counts


def test_a_failed_step_awaits_nothing_and_a_chord_waits_for_its_last_header_and_breaks_on_a_failed_one():
    w = AppWatch(app(thresholds={"next_within": 10}))
    _ran(w, "f", "shop.pack", 100, ok=False, steps=[{"kind": "chain", "id": "g", "name": "shop.ship"}])
    body = {"kind": "chord", "id": "body", "name": "shop.total", "group": "G"}
    _ran(w, "h1", "shop.part", 100, steps=[body])
    w.feed({"type": "task-received", "uuid": "h2", "name": "shop.part", "hostname": "w1"}, 100)
    w.feed({"type": "task-started", "uuid": "h2", "hostname": "w1"}, 100)
    w.feed({"type": "task-next-steps", "uuid": "h2", "hostname": "w1", "steps": [body]}, 100)
    assert _workflow_events(w, 120) == []                 # h2 still runs: the body is not due
    w.feed({"type": "task-succeeded", "uuid": "h2", "hostname": "w1"}, 125)
    assert _workflow_events(w, 130) == []                 # due 10 s after the last header succeeded
    events = _workflow_events(w, 136)
    assert len(events) == 1 and events[0].labels["step"] == "chord" and events[0].details["groups"] == ["G"]
    body2 = {"kind": "chord", "id": "body2", "name": "shop.total", "group": "G2"}
    _ran(w, "k1", "shop.part", 200, steps=[body2])
    _ran(w, "k2", "shop.part", 200, ok=False, steps=[body2])
    _ran(w, "k3", "shop.part", 201, steps=[body2])        # after the chord broke: Celery fails it, no body
    assert _workflow_events(w, 300) == []


def test_followed_by_expects_a_child_of_that_name_and_hostile_announcements_are_skipped():
    w = AppWatch(app(followed_by={"shop.label": "shop.ship"}, thresholds={"next_within": 5}))
    _ran(w, "l1", "shop.label", 100)
    _ran(w, "l2", "shop.label", 100)
    w.feed({"type": "task-received", "uuid": "s1", "name": "shop.ship", "hostname": "w1", "parent_id": "l1"}, 101)
    w.feed({"type": "task-received", "uuid": "s2", "name": "shop.other", "hostname": "w1", "parent_id": "l2"}, 101)
    for hostile in ({"type": "task-next-steps", "uuid": "x", "steps": "all"},
                    {"type": "task-next-steps", "uuid": None, "steps": []},
                    {"type": "task-next-steps", "uuid": "y", "steps": [{"kind": "rm -rf", "id": "z", "name": "n"}]},
                    {"type": "task-next-steps", "uuid": "y", "steps": [{"kind": "chain", "id": 5, "name": None}]}):
        w.feed(hostile, 100)
    many = [{"kind": "chain", "id": f"m{n}", "name": "shop.ship"} for n in range(10_000)]
    _ran(w, "big", "shop.pack", 100, steps=many)
    events = _workflow_events(w, 110)
    by_step = {e.labels["step"]: e for e in events}
    assert by_step["followed_by"].details["after_task_ids"] == ["l2"]
    assert by_step["chain"].count == 20                  # an announcement is cut to its first 20 steps
    assert w.skipped >= 4


def test_a_retry_prefers_the_result_backend_s_exact_values_to_the_event_reprs():
    from erdu_tasks.tasks.celery_apps import RetryRefused, replayable

    cut = {"task_id": "t", "args": "([1, 2, 3, ...", "kwargs": "{}", "args_value": None, "kwargs_value": None}
    with pytest.raises(RetryRefused, match="cut when recorded"):
        replayable(cut)
    exact = {**cut, "args_value": [[1, 2, 3, 4]], "kwargs_value": {}}
    assert replayable(exact) == ([[1, 2, 3, 4]], {})
    assert replayable({**cut, "args": "(1,)", "kwargs": "{'a': 2}"}) == ([1], {"a": 2})
