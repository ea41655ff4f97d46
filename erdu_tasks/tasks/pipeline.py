"""The stages commander (assess), diagnostician (diagnose) and resolver (resolve), and their shared wrapper."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

import psycopg

from .. import escalation, history, names, store
from ..app import app
from ..errors import PermanentError
from ..model import Incident, Status
from ..report import build_report, write_report
from ..roles import commander, diagnostician, resolver
from ..runtime import Runtime, runtime, worker_name
from .base import ErduTask, log, send_stage

# Which statuses a stage acts on; finding the incident elsewhere means it already moved on.
STAGE_FROM: dict[str, frozenset[Status]] = {
    "assess": frozenset({Status.DETECTED}),
    "diagnose": frozenset({Status.ASSIGNED}),
    "fix": frozenset({Status.ASSIGNED, Status.INVESTIGATING, Status.FIXING}),
    "resolve": frozenset({Status.RESOLVED}),
}

Body = Callable[[psycopg.Connection, Runtime, Incident, str], str | None]


def run_stage(task: ErduTask, stage: str, incident_id: str, body: Body) -> str | None:
    """Load the incident locked, run the body if the incident is still owed this stage, hand on after commit."""
    rt = runtime()
    worker = worker_name(task.request.hostname)
    if not isinstance(incident_id, str):
        raise PermanentError(f"{task.name} expects an incident id string, got {type(incident_id).__name__}")

    def start() -> int:
        with rt.db.transaction() as conn:
            return store.stage_started(conn, incident_id, stage)

    crashes = task.with_retries(start)
    if crashes >= rt.settings.max_worker_crashes:
        task.with_retries(lambda: park_poisoned(rt, incident_id, stage, crashes, worker))
        return None

    def work() -> str | None:
        try:
            with rt.db.transaction() as conn:
                incident = store.get_incident(conn, incident_id, for_update=True)
                if incident is None:
                    raise PermanentError(f"no incident {incident_id}")
                if incident.status not in STAGE_FROM[stage]:
                    log.info("stage already done", stage=stage, incident_id=incident_id,
                             status=incident.status.value)
                    store.stage_finished(conn, incident_id, stage)
                    return None
                next_stage = body(conn, rt, incident, worker)
                store.stage_finished(conn, incident_id, stage)
                return next_stage
        except Exception:
            _finish_quietly(rt, incident_id, stage)
            raise

    next_stage = task.with_retries(work)
    if next_stage:
        send_stage(next_stage, incident_id)
    return next_stage


def _finish_quietly(rt: Runtime, incident_id: str, stage: str) -> None:
    """A handled failure is not a crash: count the finish if the database lets us."""
    try:
        with rt.db.transaction() as conn:
            store.stage_finished(conn, incident_id, stage)
    except Exception:
        pass


def park_poisoned(rt: Runtime, incident_id: str, stage: str, crashes: int, worker: str) -> None:
    """A stage that keeps killing its worker: escalate the incident instead of looping."""
    reason = f"stage {stage} lost its worker {crashes} times (poison protection); parked for a person"
    with rt.db.transaction() as conn:
        incident = store.get_incident(conn, incident_id, for_update=True)
        if incident is None or not incident.is_open or incident.status is Status.ESCALATED:
            return
        if store.transition(conn, incident_id, expected=[incident.status], to=Status.ESCALATED,
                            actor="reconciler", worker=worker, what=reason):
            store.record_escalation(conn, incident_id, reason=reason, stage=stage)
            history.record_escalated(conn, incident.fingerprint)
            store.stage_finished(conn, incident_id, stage)
    log.error("incident parked", incident_id=incident_id, stage=stage, crashes=crashes)


def escalate_in_tx(conn: psycopg.Connection, incident: Incident, *, reason: str, stage: str | None,
                   actor: str, worker: str | None, details: dict | None = None) -> bool:
    """Move an open incident to escalated and write the escalation record; False if it was not open."""
    if not incident.is_open or incident.status is Status.ESCALATED:
        return False
    if store.transition(conn, incident.id, expected=[incident.status], to=Status.ESCALATED, actor=actor,
                        worker=worker, what=f"escalated: {reason}", details=details) is None:
        return False
    store.record_escalation(conn, incident.id, reason=reason, stage=stage)
    history.record_escalated(conn, incident.fingerprint)
    escalation.start_in_tx(conn, incident, reason=reason, stage=stage)   # durable run; the sweeper notifies
    return True


# ---- commander -------------------------------------------------------------------------------

def commander_context(conn: psycopg.Connection, rt: Runtime, incident: Incident) -> commander.CommanderContext:
    """Gather what the commander weighs."""
    from ..fixing import matching_runbooks   # the fixer's runbook engine

    stats = history.runbook_stats(conn, incident.fingerprint)
    records = [commander.RunbookRecord(rb.name, *stats.get(rb.name, (0, 0)))
               for rb in matching_runbooks(rt, incident, stats)]
    cfg = rt.settings.learning
    services = incident.affected_services
    dependants = sorted({d for s in services for d in rt.catalog.dependants(s)})
    return commander.CommanderContext(
        now=datetime.now(timezone.utc),
        open_incidents=store.count_open(conn),
        user_facing=[s for s in services if rt.catalog.is_user_facing(s)],
        dependants=dependants,
        recent_recurrences=history.recent_recurrences(conn, incident.fingerprint),
        runbooks=records,
        business_hours=None,
        auto_min_success=float(cfg.get("auto_resolve_min_success", 0.9)),
        auto_min_samples=int(cfg.get("auto_resolve_min_samples", 5)),
    )


def _assess(conn: psycopg.Connection, rt: Runtime, incident: Incident, worker: str) -> str | None:
    if escalation.assess_gate(conn, rt, incident, worker):   # silenced: parked, no fix; the sweeper resumes it
        return None
    decision = commander.assess(incident, commander_context(conn, rt, incident))
    assessment = decision.as_dict()
    if decision.decision is commander.Decision.ESCALATE:
        store.update_fields(conn, incident.id, {"severity": decision.severity, "assessment": assessment})
        escalate_in_tx(conn, incident, reason=decision.reasons[-1], stage="assess", actor="commander",
                       worker=worker, details=assessment)
        return None
    auto = decision.decision is commander.Decision.AUTO_FIX
    what = (f"assessed {decision.severity.value}: " + ("auto-resolution via " + str(decision.runbook)
                                                       if auto else "automate"))
    moved = store.transition(conn, incident.id, expected=[Status.DETECTED], to=Status.ASSIGNED,
                             actor="commander", worker=worker, what=what,
                             updates={"severity": decision.severity, "assessment": assessment,
                                      "auto_resolved": auto},
                             details={"reasons": decision.reasons})
    if moved is None:
        return None
    return "fix" if auto else "diagnose"


@app.task(name=names.ASSESS, base=ErduTask, bind=True, stage="assess")
def assess(self: ErduTask, incident_id: str) -> str | None:
    """Commander: assess severity and decide the path."""
    return run_stage(self, "assess", incident_id, _assess)





# ---- diagnostician ---------------------------------------------------------------------------

def _diagnose(conn: psycopg.Connection, rt: Runtime, incident: Incident, worker: str) -> str | None:
    from ..fixing import matching_runbooks

    related = [diagnostician.Related(r["id"], r["title"], r["status"], r["score"], r["root_cause"])
               for r in history.related_incidents(conn, incident)]
    pat = history.pattern(conn, incident.fingerprint) or {}
    stats = history.runbook_stats(conn, incident.fingerprint)
    ctx = diagnostician.DiagnosticianContext(
        related=related,
        pattern_incidents=int(pat.get("incidents", 0)),
        pattern_resolved=int(pat.get("resolved", 0)),
        working_fixes=[name for name, (a, s) in stats.items() if s > 0],
        runbook_hints={rb.name: rb.diagnosis_hint or rb.description or rb.name
                       for rb in matching_runbooks(rt, incident)},
    )
    result = diagnostician.diagnose(incident, ctx)
    moved = store.transition(conn, incident.id, expected=[Status.ASSIGNED], to=Status.INVESTIGATING,
                             actor="diagnostician", worker=worker,
                             what=f"diagnosed (confidence {result.confidence:.2f}): {result.root_cause}",
                             updates={"diagnosis": result.as_dict(), "root_cause": result.root_cause},
                             details={"evidence": result.evidence, "skill_gaps": result.skill_gaps})
    return "fix" if moved else None


@app.task(name=names.DIAGNOSE, base=ErduTask, bind=True, stage="diagnose")
def diagnose(self: ErduTask, incident_id: str) -> str | None:
    """Diagnostician: evidence and a root-cause hypothesis."""
    return run_stage(self, "diagnose", incident_id, _diagnose)





# ---- resolver --------------------------------------------------------------------------------

def close_incident(conn: psycopg.Connection, rt: Runtime, incident: Incident, worker: str, *,
                   actor: str = "resolver", human: bool = False) -> bool:
    """Write the report, learn from the incident and move it resolved -> closed."""
    escalation.on_resolved(conn, incident, worker=worker)   # stop escalation, resolve notices, re-check children
    incident.timeline = store.timeline(conn, incident.id)
    pat = history.pattern(conn, incident.fingerprint) or {}
    ctx = resolver.ResolverContext(
        now=datetime.now(timezone.utc),
        user_facing=[s for s in incident.affected_services if rt.catalog.is_user_facing(s)],
        pattern_incidents=int(pat.get("incidents", 0)),
    )
    resolution = resolver.resolve(incident, ctx)
    report = build_report(incident, resolution.as_dict())
    json_path, md_path = write_report(rt.settings.reports_dir, report)
    moved = store.transition(conn, incident.id, expected=[Status.RESOLVED], to=Status.CLOSED, actor=actor,
                             worker=worker, what=f"closed; report {md_path.name}",
                             updates={"lessons_learned": resolution.lessons_learned,
                                      "follow_ups": resolution.follow_ups, "report_path": str(md_path)},
                             details={"summary": resolution.summary, "report_json": str(json_path)})
    if moved is None:
        return False
    history.record_resolution(conn, incident, human=human)
    return True


def _resolve(conn: psycopg.Connection, rt: Runtime, incident: Incident, worker: str) -> str | None:
    close_incident(conn, rt, incident, worker, human=bool(incident.resolved_by
                                                          and incident.resolved_by.startswith("person:")))
    return None


@app.task(name=names.RESOLVE, base=ErduTask, bind=True, stage="resolve")
def resolve(self: ErduTask, incident_id: str) -> str | None:
    """Resolver: report, learning, close."""
    return run_stage(self, "resolve", incident_id, _resolve)



