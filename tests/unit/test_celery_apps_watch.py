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
