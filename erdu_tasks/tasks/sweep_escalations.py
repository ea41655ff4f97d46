"""erdu.sweep_escalations (beat, monitor queue): deliver what is due, resume held incidents, escalate stuck ones."""

from __future__ import annotations

from typing import Any

from erdu_tasks import names
from erdu_tasks.app import app
from erdu_tasks.escalation.runs import stuck_incidents, utcnow
from erdu_tasks.escalation.sweep import Escalator
from erdu_tasks.model import Status
from erdu_tasks.app import runtime
from erdu_tasks.runtime import Runtime, worker_name
from erdu_tasks.store.reconcile import OWED
from erdu_tasks.tasks.base import ErduTask, log
from erdu_tasks.tasks.escalate import escalate_incident
from erdu_tasks.tasks.publish import hand_on

def escalator_for(rt: Runtime, worker: str | None = None) -> Escalator:
    """The process's Escalator (config, channels, Redis counters), kept by the Runtime."""
    return rt.escalator(worker)


def _escalate_stuck(rt: Runtime, esc: Escalator, worker: str) -> int:
    after = esc.options.stuck_after
    if after is None:
        return 0
    with rt.db.transaction() as conn:
        rows = stuck_incidents(conn, now=utcnow(), after=after)
    escalated = 0
    for row in rows:
        status = Status(row["status"])
        minutes = after.total_seconds() / 60
        reason = f"stuck in {status.value} for over {minutes:.0f} min (the reconciler's re-drives did not move it)"
        if escalate_incident(row["id"], reason, stage=OWED.get(status), actor="escalation", worker=worker):
            escalated += 1
    return escalated


@app.task(name=names.SWEEP_ESCALATIONS, base=ErduTask, bind=True)
def sweep_escalations(self: ErduTask) -> dict[str, Any]:
    """One sweep: plan and deliver due steps, digests, resolve notices; resume and escalate incidents."""
    rt = runtime()
    worker = worker_name(self.request.hostname)
    esc = escalator_for(rt, worker)
    report = self.with_retries(lambda: esc.sweep(utcnow()))
    for incident_id, stage in report.resume:
        hand_on(stage, incident_id)   # refused: the reconciler re-drives the released stage
    stuck = self.with_retries(lambda: _escalate_stuck(rt, esc, worker))
    result = report.as_dict() | {"stuck_escalated": stuck}
    if any(v for k, v in result.items()):
        log.info("escalation sweep", **result)
    return result
