"""erdu.fix: the fixer's stage. Plan in one transaction, act outside it (keyed steps), then settle."""

from __future__ import annotations

from typing import Any

from erdu_tasks.escalation import runs as escalation
from erdu_tasks.escalation.gates import Facts, GateName
from erdu_tasks.fixer import engine as fixing
from erdu_tasks.store import history, incidents as store
from erdu_tasks import names
from erdu_tasks.app import app
from erdu_tasks.errors import PermanentError
from erdu_tasks.model import Status
from erdu_tasks.store.reconcile import lease
from erdu_tasks.runtime import Runtime, runtime, worker_name
from erdu_tasks.tasks.base import ErduTask, log
from erdu_tasks.tasks.publish import hand_on
from erdu_tasks.tasks.pipeline import STAGE_FROM, _finish_quietly, begin_stage, escalate_in_tx


@app.task(name=names.FIX, base=ErduTask, bind=True, stage="fix")
def fix(self: ErduTask, incident_id: str) -> str | None:
    """Fixer: run the chosen runbook once, validate by re-checking, resolve or roll back and escalate."""
    rt = runtime()
    worker = worker_name(self.request.hostname)
    if not begin_stage(self, rt, "fix", incident_id, worker):
        return None
    try:
        plan = self.with_retries(lambda: _plan(rt, incident_id, worker))
        if not isinstance(plan, tuple):
            _finish_quietly(rt, incident_id, "fix")
            if plan == "diagnose":
                hand_on("diagnose", incident_id)
            return plan
        incident, runbook, attempt = plan
        outcome = self.with_retries(lambda: _act(rt, incident, runbook, attempt))
        return self.with_retries(lambda: _settle(rt, incident, runbook, attempt, outcome, worker))
    except BaseException:   # a failure handled here (or a retry) is not a lost worker
        _finish_quietly(rt, incident_id, "fix")
        raise


def _plan(rt: Runtime, incident_id: str, worker: str):
    with rt.db.transaction() as conn:
        incident = store.get_incident(conn, incident_id, for_update=True)
        if incident is None:
            raise PermanentError(f"no incident {incident_id}")
        if incident.status not in STAGE_FROM["fix"]:
            log.info("stage already done", stage="fix", incident_id=incident_id, status=incident.status.value)
            return None
        if incident.status is not Status.FIXING and escalation.gate_before_fix(conn, rt.gates, incident, worker=worker):
            return None
        fix_state = dict(incident.fix or {})
        attempt = int(fix_state.get("attempt", 1))
        runbooks = fixing.matching_runbooks(rt, incident, history.runbook_stats(conn, incident.fingerprint))
        if fix_state.get("runbook"):
            runbook = next((rb for rb in runbooks if rb.name == fix_state["runbook"]), None)
        else:
            runbook = fixing.choose_runbook(runbooks, (incident.assessment or {}).get("runbook"))
        proven = (incident.assessment or {}).get("runbook")
        if (incident.auto_resolved and incident.status is Status.ASSIGNED and not fix_state.get("runbook")
                and (runbook is None or runbook.name != proven)):
            # The shortcut is only for the proven runbook; if it no longer matches, diagnose first.
            store.update_fields(conn, incident.id, {"auto_resolved": False})
            store.add_timeline(conn, incident.id, actor="fixer", worker=worker,
                               what=f"proven runbook {proven} no longer matches: full path, diagnosis first")
            return "diagnose"
        if runbook is None:
            gap = f"no runbook matches '{incident.title}' (service {incident.service or '-'})"
            diagnosis = dict(incident.diagnosis or {})
            diagnosis.setdefault("skill_gaps", [])
            if gap not in diagnosis["skill_gaps"]:
                diagnosis["skill_gaps"].append(gap)
            store.update_fields(conn, incident.id, {"diagnosis": diagnosis})
            escalate_in_tx(conn, incident, reason=f"skill gap: {gap}", stage="fix", actor="fixer", worker=worker)
            return None
        if incident.status is not Status.FIXING:
            if not fixing.rate_ok(conn, runbook, incident):
                escalate_in_tx(conn, incident, stage="fix", actor="fixer", worker=worker,
                               reason=f"rate limit: runbook {runbook.name} already ran "
                                      f"{runbook.limits.max_runs} times in {runbook.limits.per_seconds:.0f} s "
                                      f"on {incident.service or 'this service'}")
                return None
            fix_state.update(runbook=runbook.name, attempt=attempt, started_by=worker)
            store.transition(conn, incident.id, expected=[incident.status], to=Status.FIXING, actor="fixer",
                             worker=worker, what=f"fixing with runbook {runbook.name} (attempt {attempt})",
                             updates={"fix": fix_state})
            incident.status = Status.FIXING
            incident.fix = fix_state
        approval = Facts(approval_required=runbook.approval == "required", approved_by=fix_state.get("approved_by"))
        if not rt.gates.check(approval, escalation.utcnow(), (GateName.APPROVAL,)).passed:
            store.transition(conn, incident.id, expected=[Status.FIXING], to=Status.AWAITING_APPROVAL,
                             actor="fixer", worker=worker,
                             what=f"runbook {runbook.name} needs approval: run `erdu incidents approve {incident.id}`")
            return None
        fixing.claim_run(conn, incident, attempt, runbook)
        lease(conn, incident.id, _budget(runbook))
        return incident, runbook, attempt


def _budget(runbook) -> float:
    """The longest a live fixer can take on the runbook: every step's timeout, the check, the rollback."""
    seconds = sum(step.timeout for step in runbook.actions) + sum(step.timeout for step in runbook.rollback)
    check = runbook.validation
    if check is not None:
        seconds += check.delay + check.attempts * (check.timeout + check.interval) + getattr(check, "window", 0.0)
    return seconds


def _act(rt: Runtime, incident, runbook, attempt: int) -> dict[str, Any]:
    dry = rt.settings.dry_run
    steps = []
    failed = False
    for i, step in enumerate(runbook.actions):
        outcome = fixing.run_keyed(rt.db, incident, f"{attempt}:action:{i}", runbook, step, rollback=False,
                                   dry_run=dry, redis_url=rt.settings.cache_redis_url)
        steps.append(outcome.as_dict())
        if outcome.ok is False:
            failed = True
            break
    unknown = [s["step"] for s in steps if s["ok"] is None]
    if failed:
        validation = {"ok": False, "detail": "not validated: a step failed", "duration": 0.0}
    elif unknown and runbook.validation is None:
        # A step whose worker died may or may not have acted; without a check nothing proves the fix.
        validation = {"ok": False, "duration": 0.0,
                      "detail": f"outcome of step {unknown[0]} unknown (its worker was lost) and the runbook "
                                "has no validation check to prove the fix"}
    else:
        validation = fixing.validate(runbook, incident, rt.db)
    rollback = []
    if not validation["ok"]:
        for i, step in enumerate(runbook.rollback):
            outcome = fixing.run_keyed(rt.db, incident, f"{attempt}:rollback:{i}", runbook, step, rollback=False,
                                       dry_run=dry, redis_url=rt.settings.cache_redis_url)
            rollback.append(outcome.as_dict())
    return {"actions": steps, "validation": validation, "rollback": rollback, "dry_run": dry or runbook.dry_run}


def _settle(rt: Runtime, incident, runbook, attempt: int, outcome: dict[str, Any], worker: str) -> str | None:
    ok = bool(outcome["validation"]["ok"])
    with rt.db.transaction() as conn:
        store.stage_finished(conn, incident.id, "fix")   # the finish counts with the outcome, one commit
        current = store.get_incident(conn, incident.id, for_update=True)
        if current is None or current.status is not Status.FIXING:
            return None
        fix_state = {**(current.fix or {}), **outcome, "runbook": runbook.name, "attempt": attempt}
        for entry in outcome["actions"] + outcome["rollback"]:
            store.add_timeline(conn, incident.id, actor="fixer", worker=worker,
                               what=f"{'rollback ' if ':rollback:' in entry['step'] else ''}{entry['action']}: "
                                    f"{'ok' if entry['ok'] else 'unknown' if entry['ok'] is None else 'failed'}"
                                    f" — {entry['detail'][:300]}",
                               details=entry)
        lease(conn, incident.id, 0)   # settled: the next stage is on the normal deadline again
        if not outcome.get("dry_run"):   # a dry run changed nothing, so it proves nothing about the fix
            history.record_fix_attempt(conn, incident.fingerprint, runbook.name, success=ok)
        conn.execute("UPDATE runbook_runs SET outcome = %s WHERE incident_id = %s AND attempt = %s",
                     ("success" if ok else "failure", incident.id, attempt))
        if ok:
            store.transition(conn, incident.id, expected=[Status.FIXING], to=Status.RESOLVED, actor="fixer",
                             worker=worker, what=f"validated: {outcome['validation']['detail'][:300]}",
                             updates={"fix": fix_state, "resolution_actions": outcome["actions"],
                                      "resolved_by": f"runbook:{runbook.name}"})
        else:
            store.update_fields(conn, incident.id, {"fix": fix_state, "resolution_actions": outcome["actions"],
                                                    "auto_resolved": False})
            current.status = Status.FIXING
            shortcut = " (auto-resolution; the pattern goes back to the full path)" if current.auto_resolved else ""
            escalate_in_tx(conn, current, stage="fix", actor="fixer", worker=worker,
                           reason=f"runbook {runbook.name} did not fix it{shortcut}: "
                                  f"{outcome['validation']['detail'][:300]}",
                           details=outcome)
    if ok:
        hand_on("resolve", incident.id)
        return "resolve"
    return None
