"""Escalation policy: who hears about an incident, when, and how often.

Everything here is a pure decision over facts and an injected `now`; storing what was sent,
the per-channel counters and the delivery itself belong to the caller.

The `escalation` settings section (its keys are documented in erdu_tasks/settings/escalation.py)
is validated by the settings; its models are re-exported here.

Levels are numbered from 1. Level 1 starts when escalation starts; level n+1 starts when
level n's ack_deadline has passed (or earlier, when every delivery of level n gave up).
Step (level, repeat) with repeat 0 is a level's first notification. A step is identified
by `step_key`; claiming that key under a unique constraint before sending is what makes a
doubled or redelivered sweeper run send nothing twice.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

from erdu_tasks.model import Severity
from erdu_tasks.escalation.channels import DeliveryResult, Notification
from erdu_tasks.settings.common import Duration, parse_duration  # noqa: F401 - re-exported
from erdu_tasks.settings.intervals import TimeIntervals, any_active
from erdu_tasks.settings.escalation import (  # noqa: F401 - the section's models, re-exported
    EscalationConfig,
    LevelConfig,
    PolicyConfig,
    PolicyKey,
    QuietHoursConfig,
    RetryConfig,
    default_policy,
)



# --------------------------------------------------------------------------- the plan


class PlanState(StrEnum):
    """What the escalation of one incident needs right now."""

    NOTIFY = "notify"
    WAITING = "waiting"
    QUIET = "quiet"
    MUTED = "muted"
    ACKNOWLEDGED = "acknowledged"
    EXHAUSTED = "exhausted"


@dataclass(frozen=True)
class Step:
    """One notification of one level: repeat 0 is the level's first, 1.. its re-notifications."""

    level: int
    repeat: int
    channels: tuple[str, ...]
    due_at: datetime


@dataclass(frozen=True)
class SentStep:
    """A step already claimed (sent_at: when); failed_at is set when every delivery of it gave up."""

    level: int
    repeat: int
    sent_at: datetime | None = None
    failed_at: datetime | None = None


@dataclass(frozen=True)
class EscalationPlan:
    """Steps to send now, steps held by quiet hours, and when to look again."""

    state: PlanState
    due: tuple[Step, ...]
    held: tuple[Step, ...]
    next_at: datetime | None
    level: int
    muted_by: str | None = None        # the time interval that holds the steps back (state MUTED)


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: pass timezone-aware times")
    return moment


def _as_sent(record: SentStep | tuple[Any, ...]) -> SentStep:
    return record if isinstance(record, SentStep) else SentStep(*record)


def level_starts(policy: PolicyConfig, started_at: datetime, failed: Mapping[int, datetime]) -> list[datetime]:
    """When each level begins: after the previous one's deadline, or when all its deliveries gave up."""
    starts = [started_at]
    for number, level in enumerate(policy.levels[:-1], start=1):
        begin = starts[-1]
        assert level.ack_deadline is not None  # enforced by PolicyConfig
        nxt = begin + level.ack_deadline
        gave_up = failed.get(number)
        if gave_up is not None:
            nxt = min(nxt, max(gave_up, begin))
        starts.append(nxt)
    return starts


def plan_steps(
    policy: PolicyConfig,
    *,
    started_at: datetime,
    now: datetime,
    acknowledged_at: datetime | None = None,
    sent: Iterable[SentStep | tuple[Any, ...]] = (),
    severity: Severity | str | None = None,
    quiet_hours: QuietHoursConfig | None = None,
    intervals: TimeIntervals | None = None,
) -> EscalationPlan:
    """The steps of a policy due at `now`, given what was already sent (pure, idempotent).

    A step is muted while one of the policy's or its level's `mute_during` intervals matches now: it
    waits (it is planned again on the next minute) and goes out once no interval mutes it.

    Every level that has begun gets its first notification once. Only the current level
    repeats, and after a gap (a sweeper that was down) at most the latest missed repeat is
    due, never a burst: a repeat that fell due before the level's last sent_at is skipped.
    """
    started_at, now = _aware(started_at), _aware(now)
    if acknowledged_at is not None and _aware(acknowledged_at) <= now:
        return EscalationPlan(PlanState.ACKNOWLEDGED, (), (), None, 0)
    if now < started_at:
        return EscalationPlan(PlanState.WAITING, (), (), started_at, 0)
    records = [_as_sent(r) for r in sent]
    done = {(r.level, r.repeat) for r in records}
    failed: dict[int, datetime] = {}
    for r in records:
        if r.failed_at is not None:
            failed[r.level] = min(failed.get(r.level, r.failed_at), _aware(r.failed_at))
    starts = level_starts(policy, started_at, failed)
    current = max(i for i, begin in enumerate(starts) if begin <= now)
    due = [
        Step(i + 1, 0, tuple(policy.levels[i].channels), starts[i])
        for i in range(current + 1)
        if (i + 1, 0) not in done
    ]
    candidates = [starts[current + 1]] if current + 1 < len(starts) else []
    level = policy.levels[current]
    if level.repeat_interval is not None:
        interval = level.repeat_interval
        latest = math.floor((now - starts[current]) / interval)
        limit = level.max_repeats if level.max_repeats is not None else math.inf
        latest = int(min(latest, limit))
        mine = [r for r in records if r.level == current + 1]
        highest_sent = max((r.repeat for r in mine), default=0)
        last_sent = max((_aware(r.sent_at) for r in mine if r.sent_at is not None), default=None)
        latest_at = starts[current] + latest * interval
        # A repeat that fell due before this level's last notification went out is superseded by it.
        fresh = last_sent is None or latest_at > last_sent
        if latest >= 1 and latest > highest_sent and (current + 1, 0) in done and fresh:
            due.append(Step(current + 1, latest, tuple(level.channels), latest_at))
        following = latest + 1
        if following <= limit:
            candidates.append(starts[current] + following * interval)
    next_at = min(candidates) if candidates else None
    muted: list[Step] = []
    muted_by = None
    if due and intervals:
        kept = []
        for step in due:
            why = any_active([*policy.mute_during, *policy.levels[step.level - 1].mute_during], intervals, now)
            if why is None:
                kept.append(step)
            else:
                muted.append(step)
                muted_by = muted_by or why
        due = kept
        if muted:
            minute = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
            next_at = minute if next_at is None else min(next_at, minute)
    if muted and not due:
        return EscalationPlan(PlanState.MUTED, (), tuple(muted), next_at, current + 1, muted_by)
    if due and quiet_hours is not None and severity is not None and quiet_hours.holds(severity, now):
        return EscalationPlan(PlanState.QUIET, (), tuple(due), quiet_hours.ends_after(now), current + 1)
    if due:
        return EscalationPlan(PlanState.NOTIFY, tuple(due), tuple(muted), next_at, current + 1, muted_by)
    state = PlanState.WAITING if next_at is not None else PlanState.EXHAUSTED
    return EscalationPlan(state, (), (), next_at, current + 1)


def plan_escalation(
    config: EscalationConfig,
    *,
    severity: Severity | str,
    service: str | None,
    started_at: datetime,
    now: datetime,
    acknowledged_at: datetime | None = None,
    sent: Iterable[SentStep | tuple[Any, ...]] = (),
    policy_name: str | None = None,
) -> EscalationPlan:
    """What to send now for one incident, with its policy and the config's quiet hours."""
    return plan_steps(
        config.policy_for(severity, service, policy_name),
        started_at=started_at,
        now=now,
        acknowledged_at=acknowledged_at,
        sent=sent,
        severity=severity,
        quiet_hours=config.quiet_hours,
        intervals=config.time_intervals,
    )


def step_key(incident_id: str, started_at: datetime, level: int, repeat: int) -> str:
    """A stable key for one step of one escalation; claim it under a unique constraint before sending."""
    epoch_ms = int(_aware(started_at).timestamp() * 1000)
    return f"{incident_id}:{epoch_ms}:L{level}:R{repeat}"


# --------------------------------------------------------------------------- delivery retries


class RetryDecision(StrEnum):
    """What to do after one delivery attempt."""

    DONE = "done"
    RETRY = "retry"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class RetryPlan:
    """A retry decision and, for RETRY, the delay in seconds."""

    decision: RetryDecision
    delay: float = 0.0


def delivery_retry(
    result: DeliveryResult,
    attempt: int,
    retry: RetryConfig,
    *,
    jitter: Callable[[], float] = random.random,
) -> RetryPlan:
    """After attempt number `attempt` (1-based): done, retry after a backoff, or give up (permanent/exhausted)."""
    if result.ok:
        return RetryPlan(RetryDecision.DONE)
    if result.permanent or attempt >= retry.max_attempts:
        return RetryPlan(RetryDecision.GIVE_UP)
    cap = retry.backoff_cap.total_seconds()
    backoff = min(cap, retry.backoff_base.total_seconds() * 2 ** (attempt - 1))
    delay = backoff * (0.5 + 0.5 * jitter())
    if result.retry_after is not None:
        delay = max(delay, min(result.retry_after, cap))
    return RetryPlan(RetryDecision.RETRY, delay)


# --------------------------------------------------------------------------- rate limits


RATE_WINDOW = timedelta(minutes=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Digest:
    """How many notifications a channel held back in one window."""

    channel: str
    window_start: datetime
    window_end: datetime
    held: int
    sample_incidents: tuple[str, ...] = ()

    def notification(self, see_command: str = "erdu incidents ls --status escalated") -> Notification:
        """The one digest message for this window."""
        return Notification.digest(
            channel=self.channel,
            held=self.held,
            window_start=self.window_start,
            window_end=self.window_end,
            sample_incidents=self.sample_incidents,
            see_command=see_command,
        )


def rate_window(now: datetime, window: timedelta = RATE_WINDOW) -> datetime:
    """The start of the fixed window (aligned to the epoch, UTC) that now falls in."""
    elapsed = (_aware(now) - _EPOCH) // window
    return _EPOCH + elapsed * window
