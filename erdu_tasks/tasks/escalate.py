"""erdu.escalate: the errback of every stage. A stage that failed for good hands its incident to people."""

from __future__ import annotations

from erdu_tasks import names
from erdu_tasks.app import app
from erdu_tasks.escalation.start import escalate as escalate_in_tx
from erdu_tasks.app import runtime
from erdu_tasks.runtime import worker_name
from erdu_tasks.store import incidents as store
from erdu_tasks.tasks.base import ErduTask, log
from erdu_tasks.tasks.publish import publish


def kick_sweep() -> None:
    """Ask for a sweep now (after an escalation commits); beat sweeps anyway, so a failure only logs."""
    publish(names.SWEEP_ESCALATIONS, queue=names.Queue.MONITOR, expires=60)   # refused: beat sweeps anyway


def escalate_incident(incident_id: str, reason: str, *, stage: str | None, actor: str, worker: str | None) -> bool:
    """Escalate an open incident (its run opens in the same commit), then ask for a sweep to notify now."""
    rt = runtime()
    with rt.db.transaction() as conn:
        incident = store.get_incident(conn, incident_id, for_update=True)
        if incident is None:
            return False
        done = escalate_in_tx(conn, incident, reason=reason, stage=stage, actor=actor, worker=worker)
        if not done:
            store.add_timeline(conn, incident_id, actor=actor, worker=worker,
                               what=f"stage {stage} failed after the incident moved on: {reason}")
    if done:
        kick_sweep()
    return done


@app.task(name=names.ESCALATE, base=ErduTask, bind=True)
def escalate(self: ErduTask, incident_id: str, reason: str, stage: str | None = None) -> bool:
    """Errback of every stage: escalate the incident with the failure's reason."""
    if not isinstance(incident_id, str) or not incident_id.startswith("INC-"):
        log.error("escalation without incident", reason=reason)
        return False
    return self.with_retries(lambda: escalate_incident(incident_id, str(reason)[:2000], stage=stage,
                                                       actor="escalation", worker=worker_name(self.request.hostname)))
