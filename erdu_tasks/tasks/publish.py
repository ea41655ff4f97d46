"""Publish after commit: the one way a stored change hands incidents on to their next stage.

Postgres already records which stage each incident is owed (store/reconcile.py), so a publish
that the broker refuses is no reason to fail the request or the task that did the work: the
reconciler re-drives the incident once the stage deadline passes. The failure is logged once per
call, and the rest of the batch is not tried against a broker that just refused.

Tasks and the API both use this module; it imports the Celery app, never the task modules.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog
from celery import Celery
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from erdu_tasks import names
from erdu_tasks.app import app as default_app

log = structlog.get_logger("erdu.publish")

# What an unreachable or failing broker raises through Celery's publish.
BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuError, RedisError, OSError)


def publish(task_name: str, args: tuple = (), *, queue: names.Queue, app: Celery | None = None,
            **options: object) -> bool:
    """Publish one task after the commit, with the same policy: False (logged) if the broker refused."""
    try:
        (app or default_app).send_task(task_name, args=args, queue=queue.value, routing_key=queue.value, **options)
        return True
    except BROKER_ERRORS as exc:
        log.warning("publish failed; Postgres still says what is owed", task=task_name,
                    error=f"{exc.__class__.__name__}: {exc}")
        return False


def send_stage(stage: str, incident_id: str, *, app: Celery | None = None) -> None:
    """Publish one stage message on its own queue; raises the broker's error (see hand_on for the policy)."""
    task_name, queue = names.STAGES[stage]
    # The queue is set explicitly: the publisher may be another role's worker, or the API.
    (app or default_app).send_task(task_name, args=(incident_id,), queue=queue.value, routing_key=queue.value)


def hand_on(stage: str, incident_ids: str | Iterable[str], *, app: Celery | None = None) -> bool:
    """After the commit, publish `stage` for each incident; False (logged once) if the broker refused.

    Call it only once the transaction that made the stage owed has committed: the message may be
    consumed at once, and the stage must find its incident's new state.
    """
    ids = [incident_ids] if isinstance(incident_ids, str) else list(incident_ids)
    for n, incident_id in enumerate(ids):
        try:
            send_stage(stage, incident_id, app=app)
        except BROKER_ERRORS as exc:
            left = ids[n:]
            log.warning("hand-on failed; the reconciler re-drives it", stage=stage, incident_ids=left[:20],
                        not_published=len(left), error=f"{exc.__class__.__name__}: {exc}")
            return False
    return True


def hand_on_ingested(new: Iterable[str], reassess: Iterable[str] = (), *, app: Celery | None = None) -> bool:
    """After ingest's commit: assess each new incident, re-assess each already assessed whose severity rose.

    A lost re-assessment loses nothing stored: the raised severity is on the incident, and every later
    decision (and its escalation, if the fix fails) uses it."""
    handed = hand_on(names.Stage.ASSESS, new, app=app)
    for incident_id in reassess:
        handed = publish(names.REASSESS, (incident_id,), queue=names.Queue.COMMANDER, app=app) and handed
    return handed
