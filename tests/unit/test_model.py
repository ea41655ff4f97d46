"""The status machine and the Event contract, as pure logic."""

from __future__ import annotations

import pytest

from erdu_tasks.errors import InvalidTransition
from erdu_tasks.model import OPEN_STATUSES, TRANSITIONS, Event, Severity, Status, check_transition, new_incident_id

HAPPY_PATH = [Status.DETECTED, Status.ASSIGNED, Status.INVESTIGATING, Status.FIXING, Status.RESOLVED, Status.CLOSED]


def test_the_happy_path_is_allowed_step_by_step():
    for src, dst in zip(HAPPY_PATH, HAPPY_PATH[1:]):
        check_transition(src, dst)


@pytest.mark.parametrize("src", sorted(OPEN_STATUSES - {Status.ESCALATED}))
def test_any_open_status_may_be_escalated(src):
    check_transition(src, Status.ESCALATED)


@pytest.mark.parametrize("src,dst", [
    (Status.DETECTED, Status.FIXING),          # skipping the commander
    (Status.DETECTED, Status.CLOSED),
    (Status.CLOSED, Status.DETECTED),          # closed is final
    (Status.RESOLVED, Status.ESCALATED),
    (Status.INVESTIGATING, Status.ASSIGNED),   # no going back on its own
    (Status.FIXING, Status.CLOSED),            # resolve (report) comes first
])
def test_a_forbidden_transition_raises(src, dst):
    with pytest.raises(InvalidTransition, match=f"{src.value} -> {dst.value}"):
        check_transition(src, dst)


def test_fixing_and_awaiting_approval_go_both_ways():
    check_transition(Status.FIXING, Status.AWAITING_APPROVAL)
    check_transition(Status.AWAITING_APPROVAL, Status.FIXING)


def test_closed_has_no_way_out():
    assert TRANSITIONS[Status.CLOSED] == frozenset()


def test_incident_ids_have_the_seed_format():
    import re

    assert re.fullmatch(r"INC-\d{14}-[0-9a-f]{8}", new_incident_id())


def test_severity_moves_within_p1_to_p5():
    assert Severity.P1.raised() is Severity.P1
    assert Severity.P3.raised() is Severity.P2
    assert Severity.P5.lowered() is Severity.P5


@pytest.mark.parametrize("payload,error", [
    ({}, "message"),
    ({"message": ""}, "message"),
    ({"message": "x", "count": 0}, "count"),
    ({"message": "x", "severity": "P9"}, "severity"),
    ({"message": "x", "labels": {"a": 1}}, "labels"),
    ({"message": "x", "extra": True}, "extra"),
])
def test_an_invalid_event_is_refused_naming_the_field(payload, error):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as caught:
        Event.model_validate(payload)
    assert error in str(caught.value)


def test_a_huge_or_binary_message_is_kept_but_capped():
    event = Event(message="boom\x00" + "x" * 100_000)
    assert "\x00" not in event.message
    assert len(event.message) < 70_000 and "truncated" in event.message
