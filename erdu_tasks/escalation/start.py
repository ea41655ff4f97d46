"""The one way into `escalated`: compare-and-set the status and open the escalation run in one transaction.

Every path that hands an incident to people (a stage that gave up, the commander's decision,
a failed fix, a poisoned stage, a stuck incident, an approval nobody gave) calls `escalate`,
so an escalated incident always has its run, and the sweeper's first pass notifies level 1.
"""

from __future__ import annotations

from datetime import datetime

import psycopg

from erdu_tasks.escalation.runs import open_run
from erdu_tasks.model import Incident, Status
from erdu_tasks.store import history, incidents as store


def escalate(conn: psycopg.Connection, incident: Incident, *, reason: str, stage: str | None, actor: str,
             worker: str | None, details: dict | None = None, what: str | None = None,
             now: datetime | None = None) -> bool:
    """Move an open incident to escalated, record why and open its run; False when it was not open (or moved)."""
    if not incident.is_open or incident.status is Status.ESCALATED:
        return False
    if store.transition(conn, incident.id, expected=[incident.status], to=Status.ESCALATED, actor=actor,
                        worker=worker, what=what or f"escalated: {reason}", details=details) is None:
        return False
    store.record_escalation(conn, incident.id, reason=reason, stage=stage)
    history.record_escalated(conn, incident.fingerprint)
    open_run(conn, incident.id, reason=reason, stage=stage, now=now)
    incident.status = Status.ESCALATED
    return True
