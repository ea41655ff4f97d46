"""Folding a batch by fingerprint: one event per group, counts summed, a few samples."""

from __future__ import annotations

import random

import pytest

from erdu_tasks.ingest.detect.aggregate import MAX_COUNT, fold
from erdu_tasks.model import Event


def test_a_storm_of_one_template_folds_into_one_event_with_the_total_count():
    rng = random.Random(7)
    events = [
        Event(message=f"Timeout after {rng.randint(1, 9999)}ms for request {i}", service="api") for i in range(10_000)
    ]
    folded = fold(events)
    assert len(folded) == 1
    assert folded[0].count == 10_000
    assert folded[0].message == events[0].message  # the first event's fields are kept
    assert len(folded[0].samples) == 5 and len(set(folded[0].samples)) == 5
    assert folded[0].samples[0] == events[0].message


def test_templates_stay_apart_and_keep_their_first_appearance_order():
    rng = random.Random(1)
    templates = [f"error {w} in stage {{}}" for w in ("alpha", "beta", "gamma", "delta")]
    events = [Event(message=rng.choice(templates).format(rng.randint(0, 99))) for _ in range(1000)]
    folded = fold(events)
    assert len(folded) == 4
    assert sum(e.count for e in folded) == 1000
    first_seen = list(dict.fromkeys(e.message.split()[1] for e in events))
    assert [e.message.split()[1] for e in folded] == first_seen


def test_counts_already_aggregated_by_the_producer_are_added():
    events = [Event(message="disk full on /dev/sda1", count=40), Event(message="disk full on /dev/sdb2", count=2)]
    [one] = fold(events)
    assert one.count == 42
    assert one.samples == ["disk full on /dev/sda1", "disk full on /dev/sdb2"]


def test_the_same_message_from_two_services_is_two_groups():
    folded = fold([Event(message="queue overflow", service=s) for s in ("billing", "search")])
    assert [e.service for e in folded] == ["billing", "search"]


def test_dedup_key_wins_over_the_fingerprint():
    events = [
        Event(message="checkout is down", dedup_key="alert-42"),
        Event(message="completely different words", dedup_key="alert-42"),
        Event(message="checkout is down"),
    ]
    folded = fold(events)
    assert [(e.dedup_key, e.count) for e in folded] == [("alert-42", 2), (None, 1)]


def test_samples_are_distinct_and_include_those_already_carried():
    events = [Event(message="x 1", samples=["x 1", "x 2"]), Event(message="x 3"), Event(message="x 1")]
    [one] = fold(events)
    assert one.samples == ["x 1", "x 2", "x 3"]
    assert one.count == 3


def test_a_group_bigger_than_one_event_can_carry_is_split_without_loss():
    events = [Event(message="flood", count=n) for n in (MAX_COUNT, MAX_COUNT, 5)]
    folded = fold(events)
    assert [e.count for e in folded] == [MAX_COUNT, MAX_COUNT, 5]


def test_an_empty_batch_folds_to_nothing():
    assert fold([]) == []


def test_the_input_events_are_not_changed():
    event = Event(message="boom 1")
    fold([event, Event(message="boom 2")])
    assert event.count == 1 and event.samples == []


def test_max_samples_is_bounded_by_the_event_contract():
    with pytest.raises(ValueError):
        fold([Event(message="x")], max_samples=11)
