"""erdu.escalate: the errback of every stage. A stage that failed for good hands its incident to people."""

from __future__ import annotations

from erdu_tasks import names
from erdu_tasks.store import incidents as store
from erdu_tasks.app import app
from erdu_tasks.runtime import runtime, worker_name
from erdu_tasks.tasks.base import ErduTask, log
from erdu_tasks.tasks.escalation import kick_sweep
from erdu_tasks.tasks.pipeline import escalate_in_tx


def escalate_incident(incident_id: str, reason: str, *, stage: str | None, actor: str, worker: str | None) -> bool:
    """Escalate an open incident with the reason on its timeline and an escalation record."""
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
        kick_sweep()   # the run was opened in the transaction; deliver level 1 now
    return done


@app.task(name=names.ESCALATE, base=ErduTask, bind=True)
def escalate(self: ErduTask, incident_id: str, reason: str, stage: str | None = None) -> bool:
    """Errback of every stage: escalate the incident with the failure's reason."""
    if not isinstance(incident_id, str) or not incident_id.startswith("INC-"):
        log.error("escalation without incident", reason=reason)
        return False
    return self.with_retries(lambda: escalate_incident(incident_id, str(reason)[:2000], stage=stage,
                                                       actor="escalation", worker=worker_name(self.request.hostname)))
