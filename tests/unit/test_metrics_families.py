"""Metric families from a snapshot: cumulative buckets, the auto-resolve ratio, open incidents, backends down."""

from prometheus_client.core import Metric

from erdu_tasks.store.metrics import Histogram, Snapshot, families


def samples(snap: Snapshot) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in families(snap):
        assert isinstance(family, Metric)
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_histogram_buckets_are_cumulative_and_end_with_inf():
    h = Histogram([1, 0, 2, 3], total=42.0)  # below 1, [1,5), [5,15), 15 and over
    assert h.cumulative([1.0, 5.0, 15.0]) == [("1.0", 1), ("5.0", 1), ("15.0", 3), ("+Inf", 6)]


def test_a_snapshot_becomes_counters_gauges_histograms_and_a_ratio():
    snap = Snapshot(
        opened=[("P2", "probe", 3)], closed=[("P2", "probe", 2)],
        by_status=[("P2", "probe", "closed", 2), ("P2", "probe", "escalated", 1)],
        resolved_by={"automation": 3, "person": 1},
        mttr={"P2": Histogram([0, 2] + [0] * 13, total=7.5)},
        stage={"fixer": Histogram([0] * 6 + [1] + [0] * 8, total=0.7)},
        failed_tasks=[("fix", 1, 2)], notification_failures=[("slack", 4)],
        queue_depth={"fixer": 5}, unacked={"fixer": 1, "ingest": 0}, postgres_up=True, redis_up=True)
    s = samples(snap)
    assert s[("erdu_incidents_opened_total", (("severity", "P2"), ("source", "probe")))] == 3
    assert s[("erdu_incidents_closed_total", (("severity", "P2"), ("source", "probe")))] == 2
    assert s[("erdu_open_incidents", (("severity", "P2"), ("source", "probe")))] == 1
    assert s[("erdu_open_incidents", (("severity", "P1"), ("source", "probe")))] == 0
    assert s[("erdu_incidents_opened_total", (("severity", "P1"), ("source", "probe")))] == 0   # there, at 0
    assert s[("erdu_auto_resolve_ratio", ())] == 0.75
    assert s[("erdu_mttr_seconds_count", (("severity", "P2"),))] == 2
    assert s[("erdu_mttr_seconds_bucket", (("le", "1.0"), ("severity", "P2")))] == 0
    assert s[("erdu_mttr_seconds_bucket", (("le", "5.0"), ("severity", "P2")))] == 2
    assert s[("erdu_mttr_seconds_sum", (("severity", "P2"),))] == 7.5
    assert s[("erdu_stage_latency_seconds_count", (("role", "fixer"),))] == 1
    assert s[("erdu_failed_tasks_open", (("stage", "fix"),))] == 1
    assert s[("erdu_failed_tasks_total", (("stage", "assess"),))] == 0          # before its first failure
    assert s[("erdu_notification_failures_total", (("channel", "slack"),))] == 4
    assert s[("erdu_queue_depth", (("queue", "fixer"),))] == 5
    assert s[("erdu_queue_unacked", (("queue", "fixer"),))] == 1
    assert s[("erdu_queue_unacked", (("queue", "ingest"),))] == 0


def test_no_resolved_incidents_is_a_zero_ratio_not_a_division_error():
    s = samples(Snapshot(postgres_up=True))
    assert s[("erdu_auto_resolve_ratio", ())] == 0.0


def test_a_backend_that_is_down_drops_its_figures_and_says_so():
    s = samples(Snapshot(postgres_up=False, redis_up=True, queue_depth={"ingest": 2}))
    assert s[("erdu_backend_up", (("backend", "postgres"),))] == 0
    assert not any(name.startswith("erdu_incidents") for name, _ in s)
    assert s[("erdu_queue_depth", (("queue", "ingest"),))] == 2
