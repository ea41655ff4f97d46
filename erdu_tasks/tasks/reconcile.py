"""erdu.reconcile (beat): re-drive incidents stuck in a stage, escalate approvals nobody answered."""

from __future__ import annotations

from kombu import exceptions as kombu_exceptions
from redis.exceptions import RedisError

from erdu_tasks import names
from erdu_tasks.celery_ext.orphans import restore_orphans
from erdu_tasks.store import incidents as store
from erdu_tasks.app import app
from erdu_tasks.store.reconcile import approvals_overdue, stuck
from erdu_tasks.app import runtime
from erdu_tasks.runtime import worker_name
from erdu_tasks.tasks.base import ErduTask, log
from erdu_tasks.tasks.publish import hand_on
from erdu_tasks.tasks.escalate import escalate_incident
from erdu_tasks.tasks.heartbeats import ping


@app.task(name=names.RECONCILE, base=ErduTask, bind=True)
def reconcile(self: ErduTask) -> dict[str, int]:
    """One reconciliation pass; idempotent with the normal path (stages are compare-and-set)."""
    rt = runtime()
    worker = worker_name(self.request.hostname)
    deadline = rt.settings.stage_deadline_seconds

    def claim():
        with rt.db.transaction() as conn:
            owed = stuck(conn, deadline_seconds=deadline)
            for item in owed:
                store.add_timeline(conn, item.incident_id, actor="reconciler", worker=worker,
                                   what=f"stuck in {item.status.value} for over {deadline:.0f} s: re-driving {item.stage}")
                conn.execute("UPDATE stage_runs SET redrives = redrives + 1 WHERE incident_id = %s AND stage = %s",
                             (item.incident_id, item.stage))
            return owed

    # Messages a dead worker held go back to their queues first: an ingest message has no incident yet.
    try:
        orphans = restore_orphans(app, older_than=deadline)
    except (RedisError, OSError, kombu_exceptions.KombuError) as exc:   # the next pass tries again
        log.warning("cannot look for a dead worker's messages", error=str(exc)[:200])
        orphans = 0
    owed = self.with_retries(claim)
    for item in owed:
        hand_on(item.stage, item.incident_id)   # if the broker is down, the next pass after the deadline retries
    approval_deadline = rt.settings.approval_deadline_seconds

    def overdue():
        with rt.db.transaction() as conn:
            return approvals_overdue(conn, deadline_seconds=approval_deadline)

    expired = self.with_retries(overdue)
    for incident_id in expired:
        escalate_incident(incident_id, f"no approval within {approval_deadline:.0f} s", stage=names.Stage.FIX,
                          actor="reconciler", worker=worker)
    # Beat is alive (it scheduled this pass): the API watches this row and raises an incident when it ages.
    self.with_retries(lambda: ping(rt, names.BEAT_HEARTBEAT, source=worker, internal=True))
    if owed or expired or orphans:
        log.info("reconciled", redriven=len(owed), approvals_expired=len(expired), restored=orphans)
    return {"redriven": len(owed), "approvals_expired": len(expired), "restored": orphans}
