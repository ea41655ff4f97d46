"""The stage machine, declared once in names.py, agrees with the status machine and with every derived view."""

from __future__ import annotations

import pytest

from erdu_tasks import names
from erdu_tasks.escalation import runs
from erdu_tasks.model import OPEN_STATUSES, TRANSITIONS, Status
from erdu_tasks.names import STAGE_MACHINE, Stage, owed_stage
from erdu_tasks.store import reconcile
from erdu_tasks.tasks import people

PEOPLE_ONLY = {Status.ESCALATED, Status.ACKNOWLEDGED, Status.AWAITING_APPROVAL}
"""Statuses no stage drives: a person (or the approval deadline) moves the incident on."""


def test_every_stage_is_declared_once_with_its_own_task_and_queue():
    assert list(STAGE_MACHINE) == list(Stage)
    assert all(spec.stage is stage for stage, spec in STAGE_MACHINE.items())
    assert len({spec.task for spec in STAGE_MACHINE.values()}) == len(Stage)
    for spec in STAGE_MACHINE.values():
        assert names.TASK_ROUTES[spec.task] == {"queue": spec.queue.value}


@pytest.mark.parametrize("stage", list(Stage))
def test_a_stage_acts_only_on_statuses_the_status_machine_moves_on_without_a_person(stage):
    spec = STAGE_MACHINE[stage]
    assert spec.acts_on and spec.owed_from <= spec.acts_on
    for status in spec.acts_on:
        assert status not in PEOPLE_ONLY
        assert status in OPEN_STATUSES or status is Status.RESOLVED
        forward = TRANSITIONS[status] - {Status.ESCALATED, Status.RESOLVED}
        assert forward or status is Status.FIXING, f"{stage}: nothing moves {status} on"


def test_the_reconciler_owes_exactly_one_stage_for_every_status_a_stage_drives():
    owed = [s for spec in STAGE_MACHINE.values() for s in spec.owed_from]
    assert len(owed) == len(set(owed)), "two stages owed from one status"
    driven = {s for s in Status if s not in PEOPLE_ONLY and s is not Status.CLOSED}
    assert set(owed) == driven


def test_each_stage_hands_on_to_a_status_the_next_stage_acts_on():
    for stage, nxt in zip(list(Stage), list(Stage)[1:]):
        reachable = {dst for src in STAGE_MACHINE[stage].acts_on for dst in TRANSITIONS[src]}
        assert reachable & STAGE_MACHINE[nxt].acts_on, f"{stage} never reaches {nxt}"
    resolved = STAGE_MACHINE[Stage.RESOLVE].acts_on
    assert {dst for src in resolved for dst in TRANSITIONS[src]} == {Status.CLOSED}


def test_the_auto_resolution_shortcut_is_a_transition_the_status_machine_allows():
    status, stage = names.SHORTCUT_FROM
    assert status in STAGE_MACHINE[stage].acts_on
    assert Status.FIXING in TRANSITIONS[status]
    assert owed_stage(status, auto_resolved=True) is stage
    assert owed_stage(status, auto_resolved=False) is names.OWED[status]


def test_a_persons_retry_reenters_exactly_where_the_status_machine_lets_escalated_go_back():
    retry = {spec.retry_from for spec in STAGE_MACHINE.values() if spec.retry_from is not None}
    for src in (Status.ESCALATED, Status.ACKNOWLEDGED):
        # Back into a status a stage acts on; `resolved` is a person's resolve, not a retry.
        back = TRANSITIONS[src] & {s for spec in STAGE_MACHINE.values() for s in spec.acts_on} - {Status.RESOLVED}
        assert retry == back
    for spec in STAGE_MACHINE.values():
        assert spec.retry_from is None or spec.retry_from in spec.owed_from


def test_the_derived_views_are_the_declaration():
    assert names.STAGES == {s: (spec.task, spec.queue) for s, spec in STAGE_MACHINE.items()}
    assert names.STAGE_FROM[Stage.FIX] == {Status.ASSIGNED, Status.INVESTIGATING, Status.FIXING}
    assert reconcile.OWED is names.OWED
    assert reconcile.OWED[Status.INVESTIGATING] is Stage.FIX and reconcile.OWED[Status.RESOLVED] is Stage.RESOLVE
    assert people._RETRY_STATUS == {Stage.ASSESS: Status.DETECTED, Stage.DIAGNOSE: Status.ASSIGNED,
                                    Stage.FIX: Status.INVESTIGATING}
    assert set(runs._PIPELINE_STATUSES) == {"detected", "assigned", "investigating", "fixing"}


def test_stage_names_are_their_stored_strings():
    assert [s.value for s in Stage] == ["assess", "diagnose", "fix", "resolve"]
    assert names.STAGES["fix"] == names.STAGES[Stage.FIX]   # a name read back from Postgres finds its stage
