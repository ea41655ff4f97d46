"""erdu.fix: the fixer's stage. Load the facts, plan (roles.fixer), store the plan; act outside the
transaction (keyed steps); settle the outcome in a second one and hand on.

Round trips for a fix of one step that holds: three. The start of the stage, the locked read of the incident
and every read the plan needs (one); the plan's writes with the first step's claim and the commit (two);
after the step and its validation, the step's result with the settle and its commit (three). Each further
step adds one (its claim, with the previous step's result)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import psycopg

from erdu_tasks.escalation import runs as escalation, silences as silence_store
from erdu_tasks.escalation.gates import Outcome as GateOutcome
from erdu_tasks.escalation.gates.base import Facts
from erdu_tasks.escalation.runs import FIX_GATES
from erdu_tasks.escalation.silences import Silence
from erdu_tasks.fixer import engine as fixing
from erdu_tasks.fixer.actions import destroys_state
from erdu_tasks.fixer.runbooks import Approval, Runbook
from erdu_tasks.store import history, incidents as store
from erdu_tasks.store.db import later
from erdu_tasks import names
from erdu_tasks.app import app
from erdu_tasks.model import Incident, Status
from erdu_tasks.names import Stage
from erdu_tasks.roles import fixer
from erdu_tasks.roles.fixer import Candidate, FixContext, FixPlan, Outcome, RunCount
from erdu_tasks.store.reconcile import LEASE_SECONDS, lease
from erdu_tasks.runtime import Runtime
from erdu_tasks.tasks.base import ErduTask, Outside, WithReads, log, run_stage
from erdu_tasks.tasks.pipeline import escalate_in_tx


@app.task(name=names.FIX, base=ErduTask, bind=True, stage=Stage.FIX)
def fix(self: ErduTask, incident_id: str) -> Stage | None:
    """Fixer: run the chosen runbook once, validate by re-checking, resolve or roll back and escalate."""
    return run_stage(self, Stage.FIX, incident_id, FIX_BODY)


@dataclass(frozen=True)
class _Facts:
    """What the fix plan reads, besides the incident: sent with the locked read of the incident."""

    now: datetime
    records: dict[str, dict[str, Any]]
    """The learned record of each runbook on the incident's fingerprint."""
    runs: dict[str, RunCount]
    """Every runbook's recent runs on the incident's service, counted in its window."""
    restarts: dict[str, RunCount]
    """Every restart runbook's count of the service's restarts by any restart runbook in its window."""
    silences: list[Silence]


def _facts_later(conn: psycopg.Connection, rt: Runtime, incident_id: str) -> Callable[[], _Facts]:
    """The service's lock and every read the plan needs, keyed by the incident's id: drive_stage sends them
    right after the locked read of the incident, so the lock and the reads cost no round trip of their own
    (Postgres takes the lock before it runs the reads queued after it). Every runbook is counted, as the
    matching ones are known only once the incident is read."""
    now = datetime.now(timezone.utc)
    fixing.serialize_fixes_of(conn, incident_id)
    records = history.runbook_records_of_incident_later(conn, incident_id)
    every = list(rt.runbooks.runbooks)
    counts = fixing.run_counts_later(conn, every, [rb for rb in every if rb.restarts], incident_id, now=now)
    silences = silence_store.active_silences_later(conn, now)
    return later(lambda: _Facts(now, records(), *counts(), silences()))


def _fix(conn: psycopg.Connection, rt: Runtime, incident: Incident, worker: str,
         facts_later: Callable[[], _Facts]) -> Stage | None | Outside[Any]:
    """Plan from the facts, store the plan; a plan to run returns the actions to do outside the transaction.

    The plan's writes, and the claim of the first step, go with the commit: with the start of the stage and
    its reads, planning a fix costs two round trips."""
    facts = facts_later()
    now = facts.now
    # A silence that began after the commander's check still stops the fix before anything runs.
    silence = None
    if incident.status is not Status.FIXING:
        gate = rt.gates.check(Facts(incident=incident, silences=facts.silences), now, FIX_GATES)
        silence = gate.silence if gate.outcome is GateOutcome.SILENCED else None
    stats = {name: (r["attempts"], r["successes"]) for name, r in facts.records.items()}
    runbooks = fixing.matching_runbooks(rt, incident, stats)   # best first
    decision = fixer.plan(incident, _context(rt, runbooks, stats, facts.runs, facts.restarts, now=now,
                                             silence_id=silence.id if silence else None))
    log.info("fix planned", incident_id=incident.id, outcome=decision.outcome.value, runbook=decision.runbook)
    if decision.outcome is Outcome.HOLD_SILENCED:
        escalation.hold(conn, incident, kind="silence", stage=Stage.FIX, now=now, worker=worker, silence=silence)
        return None
    if decision.outcome is Outcome.DIAGNOSE_FIRST:
        store.update_fields(conn, incident.id, {"auto_resolved": False})
        store.add_timeline(conn, incident.id, actor="fixer", worker=worker, what=decision.reason)
        return Stage.DIAGNOSE
    if decision.outcome is Outcome.ESCALATE_SKILL_GAP:
        diagnosis = dict(incident.diagnosis or {})
        gaps = diagnosis.setdefault("skill_gaps", [])
        if decision.skill_gap not in gaps:
            gaps.append(decision.skill_gap)
        store.update_fields(conn, incident.id, {"diagnosis": diagnosis})
    if decision.outcome is Outcome.ESCALATE_CRASH_LOOP:   # capture the dying service first, outside the lock
        looping = next(rb for rb in runbooks if rb.name == decision.runbook)
        return Outside(act=lambda: fixing.capture_crash_loop(rt.db, rt.catalog, rt.settings.monitors, incident,
                                                             looping),
                       settle=lambda tx, found: _crash_loop(tx, incident, decision, found, worker))
    if decision.escalates:
        escalate_in_tx(conn, incident, reason=decision.reason, stage=Stage.FIX, actor="fixer", worker=worker)
        return None
    runbook = next(rb for rb in runbooks if rb.name == decision.runbook)
    if decision.start:
        fix_state = {**decision.fix_state, "started_by": worker}
        store.transition(conn, incident.id, expected=[incident.status], to=Status.FIXING, actor="fixer",
                         worker=worker, what=f"fixing with runbook {runbook.name} (attempt {decision.attempt})",
                         updates={"fix": fix_state}, status_now=incident.status)
        incident.status = Status.FIXING
        incident.fix = fix_state
    if decision.outcome is Outcome.AWAIT_APPROVAL:
        store.transition(conn, incident.id, expected=[Status.FIXING], to=Status.AWAITING_APPROVAL,
                         actor="fixer", worker=worker, what=decision.reason)
        return None
    if decision.delay > 0:
        backoff = next(r for r in decision.reasons if r.startswith("back-off:"))
        store.add_timeline(conn, incident.id, actor="fixer", worker=worker, what=backoff[:500],
                           details={"backoff_seconds": round(decision.delay, 3),
                                    "earlier_runs": decision.restarts_in_window})
    fixing.claim_run(conn, incident, decision.attempt, runbook)
    lease(conn, incident.id, LEASE_SECONDS)   # kept while the actions run (tasks/base.run_stage)
    steps = fixing.KeyedSteps(rt.db, incident, runbook, dry_run=decision.dry_run,
                              redis_url=rt.settings.cache_redis_url, url_policy=rt.url_policy, catalog=rt.catalog,
                              claimed=_claim_first_step(conn, incident, runbook, decision))
    hold = (runbook.recurrence_window if runbook.recurrence_window is not None
            else rt.learning.recurrence_window_seconds)

    def settle(tx: psycopg.Connection, outcome: dict[str, Any], *, moved: bool = False) -> Stage | None:
        return _settle(tx, incident, runbook, decision.attempt, outcome, worker, steps=steps, hold_seconds=hold,
                       moved=moved)

    return Outside(act=lambda: _act(rt, incident, runbook, decision, steps), settle=settle,
                   resettle=lambda tx, outcome: settle(tx, outcome, moved=True))


def _claim_first_step(conn: psycopg.Connection, incident: Incident, runbook: Runbook, decision: FixPlan
                      ) -> dict[str, Callable[[], fixing.StepOutcome | None]]:
    """The first step's claim, sent with the plan's commit when nothing comes between the plan and the step:
    no back-off to wait (after which the step may turn out not needed) and no capture of the service first
    (a worker lost while capturing must leave the step unclaimed, so the redelivered fix still runs it)."""
    if not runbook.actions or decision.delay > 0:
        return {}
    first = runbook.actions[0]
    if not decision.dry_run and destroys_state(first.action):
        return {}
    key = f"{decision.attempt}:action:0"
    return {key: fixing.claim_step_later(conn, incident, key, runbook, first.action)}


FIX_BODY = WithReads(send=_facts_later, body=_fix)
"""The fix stage's body, its reads sent with the locked read of the incident (tasks/base.drive_stage)."""


def _context(rt: Runtime, runbooks: list[Runbook], stats: dict[str, tuple[int, int]],
             runs: dict[str, RunCount], restarts: dict[str, RunCount], *,
             now: datetime, silence_id: str | None) -> FixContext:
    """The facts the plan decides on: the matching runbooks (best first) with their recent runs."""
    none = RunCount(0, None)
    candidates = []
    for rb in runbooks:
        attempts, successes = stats.get(rb.name, (0, 0))
        candidates.append(Candidate(
            name=rb.name, approval_required=rb.approval is Approval.REQUIRED, dry_run=rb.dry_run,
            max_runs=rb.limits.max_runs, per_seconds=rb.limits.per_seconds, runs_counted=runs.get(rb.name, none),
            success_rate=successes / attempts if attempts else None, remedial=rb.remedial,
            restarts=rb.restarts, backoff=rb.backoff, backoff_max=rb.limits.backoff_max,
            restarts_counted=restarts.get(rb.name, none) if rb.restarts else None))
    return FixContext(now=now, candidates=tuple(candidates), silence_id=silence_id,
                      dry_run=bool(rt.settings.dry_run))


def _act(rt: Runtime, incident: Incident, runbook: Runbook, decision: FixPlan,
         steps: fixing.KeyedSteps) -> dict[str, Any]:
    """Run the runbook's steps (each at most once per key), validate, and run its rollback steps if it failed."""
    attempt, dry = decision.attempt, decision.dry_run
    if decision.delay > 0 and not dry:   # the back-off between runs on one service (a crash loop slows down)
        time.sleep(decision.delay)
        # The service was just repaired by another run: if its check passes now, nothing needs to run.
        already = fixing.precheck(runbook, incident, rt.db, rt.catalog, rt.url_policy)
        if already is not None and already["ok"]:
            return {"actions": [], "validation": already, "rollback": [], "dry_run": False, "not_needed": True}
    done_steps = []
    failed = False
    captured = None
    for i, step in enumerate(runbook.actions):
        if not dry and captured is None:   # capture before repair: the state a restart would destroy
            captured = fixing.capture_before(rt.db, rt.catalog, rt.settings.monitors, incident, attempt, step)
        outcome = steps.run(f"{attempt}:action:{i}", step)
        done_steps.append(outcome.as_dict())
        if outcome.ok is False:
            failed = True
            break
    unknown = [s["step"] for s in done_steps if s["ok"] is None]
    if failed:
        validation = {"ok": False, "detail": "not validated: a step failed", "duration": 0.0}
    elif unknown and runbook.validation is None:
        # A step whose worker died may or may not have acted; without a check nothing proves the fix.
        validation = {"ok": False, "duration": 0.0,
                      "detail": f"outcome of step {unknown[0]} unknown (its worker was lost) and the runbook "
                                "has no validation check to prove the fix"}
    else:
        validation = fixing.validate(runbook, incident, rt.db, rt.catalog, rt.url_policy)
    rollback = []
    if not validation["ok"]:
        for i, step in enumerate(runbook.rollback):
            rollback.append(steps.run(f"{attempt}:rollback:{i}", step).as_dict())
    done = {"actions": done_steps, "validation": validation, "rollback": rollback, "dry_run": dry}
    if captured is not None:
        done["capture"] = captured
    return done


def _crash_loop(conn: psycopg.Connection, incident: Incident, decision: FixPlan, found: dict[str, Any],
                worker: str) -> Stage | None:
    """The circuit breaker tripped: escalate with the count and what was captured of the dying service."""
    current = store.get_incident(conn, incident.id, for_update=True)
    if current is None or current.status not in names.STAGE_FROM[Stage.FIX]:
        return None
    store.update_fields(conn, incident.id, {"auto_resolved": False})
    escalate_in_tx(conn, current, reason=decision.reason, stage=Stage.FIX, actor="fixer", worker=worker,
                   details={"crash_loop": {"runbook": decision.runbook, "restarts": decision.restarts_in_window},
                            "thread_dump": bool((found.get("thread_dump") or {}).get("ok"))})
    return None


def _settle(conn: psycopg.Connection, incident: Incident, runbook: Runbook, attempt: int,
            outcome: dict[str, Any], worker: str, *, steps: fixing.KeyedSteps, hold_seconds: float = 0.0,
            moved: bool = False) -> Stage | None:
    """Store what the fix did: resolved if it held, else escalated; the learned counts either way.

    A validated fix settles in one round trip, its writes sent after store.expect_status: they apply only if
    the incident is still fixing (else drive_stage settles again, `moved`, against the incident as it is
    now). A failed one reads the incident first, as its escalation needs it.

    A validated fix is then watched for `hold_seconds`: a new incident of the fingerprint in that time marks
    it failed after the fact (ingest.accept -> store.history.fixes_that_did_not_hold)."""
    ok = bool(outcome["validation"]["ok"])
    steps.store_pending(conn)   # the steps' results stand whatever became of the incident
    if ok and not moved:
        store.expect_status(conn, incident.id, [Status.FIXING])
        current = incident
    else:
        found = store.get_incident(conn, incident.id, for_update=True)
        if found is None or found.status is not Status.FIXING:
            return None
        current = found
    fix_state = {**outcome, "runbook": runbook.name, "attempt": attempt}
    store.add_timeline_lines(conn, incident.id, [
        store.Line(actor="fixer", worker=worker, details=entry,
                   what=f"{'rollback ' if ':rollback:' in entry['step'] else ''}{entry['action']}: "
                        f"{'ok' if entry['ok'] else 'unknown' if entry['ok'] is None else 'failed'}"
                        f" — {entry['detail'][:300]}")
        for entry in outcome["actions"] + outcome["rollback"]])
    lease(conn, incident.id, 0)   # settled: the next stage is on the normal deadline again
    # A dry run changed nothing, and a fix found not needed ran nothing: neither proves anything about the fix.
    counted = not outcome.get("dry_run") and not outcome.get("not_needed")
    if counted:
        history.record_fix_attempt(conn, incident.fingerprint, runbook.name, success=ok)
    history.settle_run(conn, incident.id, attempt, success=ok, counted=counted, hold_seconds=hold_seconds,
                       not_needed=bool(outcome.get("not_needed")))
    store.merge_fix(conn, incident.id, fix_state)   # into the record as stored (capture included)
    if ok:
        store.transition(conn, incident.id, expected=[Status.FIXING], to=Status.RESOLVED, actor="fixer",
                         worker=worker, what=f"validated: {outcome['validation']['detail'][:300]}",
                         updates={"resolution_actions": outcome["actions"],
                                  "resolved_by": f"runbook:{runbook.name}"}, status_now=Status.FIXING)
        return Stage.RESOLVE
    store.update_fields(conn, incident.id, {"resolution_actions": outcome["actions"], "auto_resolved": False})
    current.status = Status.FIXING
    shortcut = " (auto-resolution; the pattern goes back to the full path)" if current.auto_resolved else ""
    escalate_in_tx(conn, current, stage=Stage.FIX, actor="fixer", worker=worker,
                   reason=f"runbook {runbook.name} did not fix it{shortcut}: "
                          f"{outcome['validation']['detail'][:300]}",
                   details=outcome)
    return None
