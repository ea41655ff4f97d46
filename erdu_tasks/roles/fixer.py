"""The fixer's decision: which runbook, and whether it may run now — a pure function of the facts.

`plan(incident, context)` takes the incident and the facts the fix task loaded (the runbooks that
match, best first; their recent runs on this service; an active silence; the dry-run switch; the
time) and returns a FixPlan: an outcome with a readable name, the runbook it concerns and the
reasons, last one deciding. The task stores the plan, runs the actions (fixer/engine) and settles.

The order of the checks is the order of the stakes:

1. a silence that began after the commander's check stops the fix before anything runs
   (unless the fix already started: an approved or redelivered fix carries on);
2. the auto-resolution shortcut is only for the proven runbook: if it no longer matches, or it
   only verifies (every action a noop, which never earns auto-resolution), the incident goes back
   to the full path (diagnosis first);
3. no matching runbook is a skill gap, escalated to people;
4. a runbook that already ran `max_runs` times in `per_seconds` on this service escalates
   instead of looping (checked once, when the attempt starts); for a restart this is the crash-loop
   circuit breaker: "restarted N times, it keeps dying";
   below the limit, a run waits its back-off after the previous run (doubling with each run in the window);
5. a runbook with `approval: required` waits for a person's yes;
6. otherwise it runs (as a dry run if ERDU or the runbook says so).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, NamedTuple

from erdu_tasks.model import Incident, Status


class Outcome(StrEnum):
    """What the fixer does with the incident now; stored on the timeline and used as a log field."""

    RUN = "run"
    AWAIT_APPROVAL = "await_approval"
    HOLD_SILENCED = "hold_silenced"
    DIAGNOSE_FIRST = "diagnose_first"
    ESCALATE_SKILL_GAP = "escalate_skill_gap"
    ESCALATE_RATE_LIMITED = "escalate_rate_limited"
    ESCALATE_CRASH_LOOP = "escalate_crash_loop"


class RunCount(NamedTuple):
    """Runs in a limit window ending at the plan's `now`, counted where they are kept (Postgres)."""

    count: int
    latest: datetime | None
    """The start of the latest of them (None without runs)."""


@dataclass(frozen=True)
class Candidate:
    """A runbook whose matcher fits the incident, as far as the plan needs to know it."""

    name: str
    approval_required: bool = False
    dry_run: bool = False
    max_runs: int = 3
    per_seconds: float = 3600.0
    recent_runs: tuple[datetime, ...] = ()
    """Start times of this runbook's runs on the incident's service for other incidents."""
    success_rate: float | None = None
    """The learned success rate on this fingerprint (None: no attempts yet)."""
    remedial: bool = True
    """False for a runbook that only verifies (noop actions): never the auto-resolution shortcut."""
    restarts: bool = False
    """True for a runbook that restarts the service: its limit is a crash-loop circuit breaker."""
    backoff: float = 0.0
    """Seconds to wait after the previous run in the window, doubled for each further run."""
    backoff_max: float = 60.0
    service_restarts: tuple[datetime, ...] = ()
    """Start times of restarts of the incident's service by any runbook (other incidents): the back-off of a
    restart runbook counts these, so two incidents of one outage do not restart the service twice at once."""
    runs_counted: RunCount | None = None
    """recent_runs already counted in this candidate's window (what the fix task loads); recent_runs is then
    not read."""
    restarts_counted: RunCount | None = None
    """service_restarts already counted in this candidate's window (for a restart runbook); service_restarts is
    then not read."""


@dataclass(frozen=True)
class FixContext:
    """The facts the fix task loaded for one decision."""

    now: datetime
    candidates: Sequence[Candidate] = ()
    """Matching runbooks, best first (learned success rate, then the narrower matcher)."""
    silence_id: str | None = None
    """An active silence that covers the incident, if any."""
    dry_run: bool = False
    """ERDU-wide dry run: show what would run, run nothing."""


@dataclass(frozen=True)
class FixPlan:
    """The fixer's decision, a plain value."""

    outcome: Outcome
    reasons: tuple[str, ...]
    runbook: str | None = None
    attempt: int = 1
    start: bool = False
    """True when this plan starts the attempt (the incident moves to fixing with `fix_state`)."""
    fix_state: Mapping[str, Any] = field(default_factory=dict)
    """The incident's `fix` record as it should be stored once the attempt starts."""
    skill_gap: str | None = None
    dry_run: bool = False
    delay: float = 0.0
    """Seconds to wait before the first step (the back-off after the previous run on this service)."""
    restarts_in_window: int = 0
    """How many earlier runs of the runbook on this service fall in its limit window."""

    @property
    def reason(self) -> str:
        """The deciding reason."""
        return self.reasons[-1]

    @property
    def escalates(self) -> bool:
        """True for the outcomes that hand the incident to people."""
        return self.outcome in (Outcome.ESCALATE_SKILL_GAP, Outcome.ESCALATE_RATE_LIMITED,
                                Outcome.ESCALATE_CRASH_LOOP)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def runs_in_window(candidate: Candidate, now: datetime) -> int:
    """How many of the candidate's recent runs fall in its rate-limit window ending now.

    Naive datetimes are taken as UTC; runs stamped in the future (clock skew) count as recent.
    """
    if candidate.runs_counted is not None:
        return candidate.runs_counted.count
    return _in_window(candidate.recent_runs, candidate.per_seconds, now).count


def _in_window(times: Sequence[datetime], per_seconds: float, now: datetime) -> RunCount:
    """How many of `times` fall in the window of `per_seconds` ending at `now`, and the latest of those."""
    start = _utc(now) - timedelta(seconds=per_seconds)
    recent = [u for u in map(_utc, times) if u > start]
    return RunCount(len(recent), max(recent) if recent else None)


def backoff_delay(candidate: Candidate, now: datetime) -> float:
    """Seconds still to wait before the next run: `backoff` after one earlier run in the window, twice that
    after two, ... at most `backoff_max`, counted from the latest run. 0 without earlier runs. For a restart
    runbook the earlier runs are the service's restarts by any runbook."""
    if candidate.backoff <= 0:
        return 0.0
    restarts = candidate.restarts_counted
    if candidate.restarts and restarts is not None and restarts.count:
        counted = restarts
    elif candidate.restarts and restarts is None and candidate.service_restarts:
        counted = _in_window(candidate.service_restarts, candidate.per_seconds, now)
    elif candidate.runs_counted is not None:
        counted = candidate.runs_counted
    else:
        counted = _in_window(candidate.recent_runs, candidate.per_seconds, now)
    if not counted.count or counted.latest is None:
        return 0.0
    wait = min(candidate.backoff * 2 ** (counted.count - 1), candidate.backoff_max)
    return max(0.0, wait - (_utc(now) - _utc(counted.latest)).total_seconds())


def _chosen(incident: Incident, ctx: FixContext) -> tuple[Candidate | None, str | None]:
    """The runbook this attempt uses, and the one the commander picked (proven, under auto-resolution)."""
    fix_state = incident.fix or {}
    preferred = (incident.assessment or {}).get("runbook")
    by_name = {c.name: c for c in ctx.candidates}
    if fix_state.get("runbook"):   # an attempt already started keeps its runbook, if it still matches
        return by_name.get(fix_state["runbook"]), preferred
    if not ctx.candidates:
        return None, preferred
    return by_name.get(preferred) or ctx.candidates[0], preferred


def plan(incident: Incident, ctx: FixContext) -> FixPlan:
    """Decide what the fixer does with the incident now (see the module docstring for the order)."""
    fix_state = dict(incident.fix or {})
    attempt = int(fix_state.get("attempt", 1))
    started = incident.status is Status.FIXING
    if not started and ctx.silence_id is not None:
        return FixPlan(Outcome.HOLD_SILENCED, (f"silenced by {ctx.silence_id}: nothing runs while it lasts",),
                       attempt=attempt)
    candidate, preferred = _chosen(incident, ctx)
    if (incident.auto_resolved and incident.status is Status.ASSIGNED and not fix_state.get("runbook")
            and (candidate is None or candidate.name != preferred)):
        return FixPlan(Outcome.DIAGNOSE_FIRST,
                       (f"proven runbook {preferred} no longer matches: full path, diagnosis first",),
                       attempt=attempt)
    if (incident.auto_resolved and incident.status is Status.ASSIGNED and not fix_state.get("runbook")
            and candidate is not None and not candidate.remedial):
        return FixPlan(Outcome.DIAGNOSE_FIRST,
                       (f"runbook {candidate.name} only verifies (noop actions) and never counts toward "
                        "auto-resolution: full path, diagnosis first",), attempt=attempt)
    if candidate is None:
        gap = f"no runbook matches '{incident.title}' (service {incident.service or '-'})"
        return FixPlan(Outcome.ESCALATE_SKILL_GAP, (f"skill gap: {gap}",), attempt=attempt, skill_gap=gap)
    reasons = [f"runbook {candidate.name}"
               + (f" (learned success rate {candidate.success_rate:.0%})" if candidate.success_rate is not None
                  else "")]
    delay, earlier = 0.0, 0
    if not started:
        earlier = runs_in_window(candidate, ctx.now)
        where = incident.service or "this service"
        if earlier >= candidate.max_runs and candidate.restarts:
            reasons.append(f"crash loop: {where} was restarted {earlier} times in {candidate.per_seconds:.0f} s "
                           f"by runbook {candidate.name} and it keeps dying; circuit breaker open, no more "
                           "restarts (see the captured process state, thread dump and last log lines)")
            return FixPlan(Outcome.ESCALATE_CRASH_LOOP, tuple(reasons), runbook=candidate.name, attempt=attempt,
                           restarts_in_window=earlier)
        if earlier >= candidate.max_runs:
            reasons.append(f"rate limit: runbook {candidate.name} already ran {candidate.max_runs} times in "
                           f"{candidate.per_seconds:.0f} s on {incident.service or 'this service'}")
            return FixPlan(Outcome.ESCALATE_RATE_LIMITED, tuple(reasons), runbook=candidate.name, attempt=attempt)
        delay = backoff_delay(candidate, ctx.now)
        if delay > 0:
            reasons.append(f"back-off: runbook {candidate.name} ran {earlier} time(s) on {where} in the last "
                           f"{candidate.per_seconds:.0f} s; waiting {delay:.1f} s before running it again")
        fix_state.update(runbook=candidate.name, attempt=attempt)
        reasons.append(f"fixing with runbook {candidate.name} (attempt {attempt})")
    dry_run = ctx.dry_run or candidate.dry_run
    if candidate.approval_required and not fix_state.get("approved_by"):
        reasons.append(f"runbook {candidate.name} needs approval: run `erdu incidents approve {incident.id}`")
        return FixPlan(Outcome.AWAIT_APPROVAL, tuple(reasons), runbook=candidate.name, attempt=attempt,
                       start=not started, fix_state=fix_state, dry_run=dry_run, restarts_in_window=earlier)
    if fix_state.get("approved_by"):
        reasons.append(f"approved by {fix_state['approved_by']}")
    reasons.append(("dry run of " if dry_run else "running ") + f"runbook {candidate.name} (attempt {attempt})")
    return FixPlan(Outcome.RUN, tuple(reasons), runbook=candidate.name, attempt=attempt, start=not started,
                   fix_state=fix_state, dry_run=dry_run, delay=delay, restarts_in_window=earlier)
