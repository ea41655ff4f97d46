"""Every queue, task and key name ERDU uses, and the stage machine, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from erdu_tasks.model import Status


class Queue(StrEnum):
    """Broker queues; each role pool consumes exactly one."""

    INGEST = "ingest"
    MONITOR = "monitor"
    COMMANDER = "commander"
    DIAGNOSTICIAN = "diagnostician"
    FIXER = "fixer"
    RESOLVER = "resolver"


ROLES: tuple[str, ...] = tuple(q.value for q in Queue)

# Task names are a public contract (any Celery client may send erdu.ingest).
INGEST = "erdu.ingest"
ASSESS = "erdu.assess"
DIAGNOSE = "erdu.diagnose"
FIX = "erdu.fix"
RESOLVE = "erdu.resolve"
ESCALATE = "erdu.escalate"
REASSESS = "erdu.reassess"
RECONCILE = "erdu.reconcile"
PRUNE = "erdu.prune"
SWEEP_ESCALATIONS = "erdu.sweep_escalations"
AUTO_RESOLVE = "erdu.auto_resolve"
MONITOR_LOGS = "erdu.monitor.logs"
MONITOR_PROBES = "erdu.monitor.probes"
MONITOR_SYSTEM = "erdu.monitor.system"
MONITOR_CELERY = "erdu.monitor.celery"
MONITOR_HEARTBEATS = "erdu.monitor.heartbeats"
HEARTBEAT = "erdu.heartbeat"          # a ping, by name: any Celery client may send it (the ingest queue)
BEAT_HEARTBEAT = "erdu:beat"          # the heartbeat beat's reconciler writes; the API watches it


class Stage(StrEnum):
    """The four pipeline stages, one per role; the value is stored (escalations.stage) and logged."""

    ASSESS = "assess"
    DIAGNOSE = "diagnose"
    FIX = "fix"
    RESOLVE = "resolve"


@dataclass(frozen=True)
class StageSpec:
    """Everything the pipeline, the reconciler, the sweeper and a person's retry need to know about a stage."""

    stage: Stage
    task: str
    queue: Queue
    acts_on: frozenset[Status]
    """The statuses the stage acts on; finding the incident in another means it already moved on."""
    owed_from: frozenset[Status]
    """The statuses in which the reconciler owes the incident this stage (re-driven after the deadline)."""
    retry_from: Status | None
    """The status a person's retry puts the incident back to before re-driving this stage (None: no re-entry)."""
    escalates_when_stuck: bool
    """True if an incident left too long in acts_on escalates to people (the sweeper's stuck check)."""


# The stage machine, declared once. Everything below, and every module that needs a stage's task, queue
# or statuses, is derived from it; tests/unit/test_stages.py checks it against model.TRANSITIONS.
STAGE_MACHINE: dict[Stage, StageSpec] = {
    spec.stage: spec for spec in (
        StageSpec(Stage.ASSESS, ASSESS, Queue.COMMANDER,
                  acts_on=frozenset({Status.DETECTED}),
                  owed_from=frozenset({Status.DETECTED}),
                  retry_from=Status.DETECTED, escalates_when_stuck=True),
        StageSpec(Stage.DIAGNOSE, DIAGNOSE, Queue.DIAGNOSTICIAN,
                  acts_on=frozenset({Status.ASSIGNED}),
                  owed_from=frozenset({Status.ASSIGNED}),
                  retry_from=Status.ASSIGNED, escalates_when_stuck=True),
        # The fix also acts on `assigned`: the auto-resolution shortcut skips diagnosis (SHORTCUT_FROM).
        StageSpec(Stage.FIX, FIX, Queue.FIXER,
                  acts_on=frozenset({Status.ASSIGNED, Status.INVESTIGATING, Status.FIXING}),
                  owed_from=frozenset({Status.INVESTIGATING, Status.FIXING}),
                  retry_from=Status.INVESTIGATING, escalates_when_stuck=True),
        # A resolved incident is only owed its report and close; it never escalates, and is not retried
        # by re-entry (it is re-driven from `resolved` as it is).
        StageSpec(Stage.RESOLVE, RESOLVE, Queue.RESOLVER,
                  acts_on=frozenset({Status.RESOLVED}),
                  owed_from=frozenset({Status.RESOLVED}),
                  retry_from=None, escalates_when_stuck=False),
    )
}

SHORTCUT_FROM: tuple[Status, Stage] = (Status.ASSIGNED, Stage.FIX)
"""An auto-resolved incident in `assigned` is owed the fix (the proven runbook), not the diagnosis."""

# Derived views.
STAGES: dict[Stage, tuple[str, Queue]] = {s: (spec.task, spec.queue) for s, spec in STAGE_MACHINE.items()}
"""Stage -> (task name, queue): where a stage is published."""

STAGE_FROM: dict[Stage, frozenset[Status]] = {s: spec.acts_on for s, spec in STAGE_MACHINE.items()}
"""Stage -> the statuses it acts on."""

OWED: dict[Status, Stage] = {status: s for s, spec in STAGE_MACHINE.items() for status in spec.owed_from}
"""Status -> the stage the reconciler owes an incident in it."""

RETRY_STATUS: dict[Stage, Status] = {
    s: spec.retry_from for s, spec in STAGE_MACHINE.items() if spec.retry_from is not None}
"""Stage -> the status a person's retry re-enters at."""

PIPELINE_STATUSES: frozenset[Status] = frozenset().union(
    *(spec.acts_on for spec in STAGE_MACHINE.values() if spec.escalates_when_stuck))
"""Statuses in which automation works on an incident; one left there too long escalates."""


REASSESSED_IN: frozenset[Status] = frozenset({Status.ASSIGNED, Status.INVESTIGATING, Status.FIXING,
                                               Status.AWAITING_APPROVAL})
"""Statuses past the assessment in which a severity rise re-runs it (a detected incident is yet to be assessed,
an escalated one is paged again by ingest itself)."""


def owed_stage(status: Status, *, auto_resolved: bool = False) -> Stage | None:
    """The stage the reconciler owes an incident in `status` (the fix for an auto-resolution shortcut)."""
    if auto_resolved and status is SHORTCUT_FROM[0]:
        return SHORTCUT_FROM[1]
    return OWED.get(status)


# Routing: the single table every producer and worker uses.
TASK_ROUTES: dict[str, dict[str, str]] = {
    INGEST: {"queue": Queue.INGEST.value},
    HEARTBEAT: {"queue": Queue.INGEST.value},
    ASSESS: {"queue": Queue.COMMANDER.value},
    DIAGNOSE: {"queue": Queue.DIAGNOSTICIAN.value},
    FIX: {"queue": Queue.FIXER.value},
    RESOLVE: {"queue": Queue.RESOLVER.value},
    ESCALATE: {"queue": Queue.COMMANDER.value},
    REASSESS: {"queue": Queue.COMMANDER.value},
    RECONCILE: {"queue": Queue.MONITOR.value},
    PRUNE: {"queue": Queue.MONITOR.value},
    SWEEP_ESCALATIONS: {"queue": Queue.MONITOR.value},
    AUTO_RESOLVE: {"queue": Queue.MONITOR.value},
    "erdu.monitor.*": {"queue": Queue.MONITOR.value},
}

# Dedup key namespaces of ERDU's own sources. A key in one of them is refused from any other producer,
# so no producer can pre-open (and squat on) the incident a later alert, probe or monitor event lands on.
OWN_DEDUP_NAMESPACES: tuple[str, ...] = ("alertmanager:", "pagerduty:", "probe:", "celery:", "logtail:",
                                         "system:", "erdu:", "heartbeat:", "celeryapp:")

# Redis keys owned by ERDU (besides the broker's own).
BEAT_LOCK_KEY = "erdu:beat:lock"
REDBEAT_PREFIX = "erdu:redbeat:"
TAIL_LOCK_PREFIX = "erdu:monitor:tail:"  # + sha1(path): one log tailer per file at a time
NOTIFY_RATE_PREFIX = "erdu:notify:rate:"  # + channel:window: notifications per channel per minute
SLACK_SEEN_PREFIX = "erdu:slack:seen:"  # + signature: a Slack request already accepted (replays refused)
SLACK_CLICK_PREFIX = "erdu:slack:click:"  # + click key: a button click already handled (retries do nothing)
