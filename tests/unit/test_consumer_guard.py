"""The consumer guard's judgement: only waiting work, an idle worker and no progress for the whole window."""

from erdu_tasks.celery_ext.consumer_guard import Watch, queue_keys


def test_waiting_work_and_an_idle_worker_for_the_whole_window_is_a_stall():
    watch = Watch(stall_seconds=30)
    assert not watch.observe(waiting=5, held=0, started=10, now=100.0)   # started changed from 0: progress
    assert not watch.observe(waiting=5, held=0, started=10, now=101.0)   # idle from here
    assert not watch.observe(waiting=5, held=0, started=10, now=130.0)
    assert watch.observe(waiting=5, held=0, started=10, now=131.0)


def test_a_worker_that_starts_tasks_or_holds_one_or_has_nothing_waiting_is_healthy():
    watch = Watch(stall_seconds=30, started_then=10)
    assert not watch.observe(waiting=5, held=0, started=10, now=0.0)
    assert not watch.observe(waiting=5, held=0, started=11, now=40.0)   # it started one: the window restarts
    assert not watch.observe(waiting=5, held=0, started=11, now=41.0)
    assert not watch.observe(waiting=5, held=2, started=11, now=80.0)   # busy with its own
    assert not watch.observe(waiting=5, held=0, started=11, now=81.0)
    assert not watch.observe(waiting=0, held=0, started=11, now=120.0)  # nothing to take
    assert not watch.observe(waiting=5, held=0, started=11, now=121.0)
    assert not watch.observe(waiting=5, held=0, started=11, now=150.0)
    assert watch.observe(waiting=5, held=0, started=11, now=151.0)


def test_the_guard_watches_the_priority_lists_too():
    assert queue_keys(["fixer"]) == ["fixer", "fixer\x06\x163", "fixer\x06\x166", "fixer\x06\x169"]
