"""What people do to incidents — acknowledge, resolve, approve, retry, silence its service — shared by the CLI,
the API and Slack's buttons."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from erdu_tasks.escalation import silences
from erdu_tasks.store import incidents as store
from erdu_tasks.errors import ErduError
from erdu_tasks.model import OPEN_STATUSES, Status
from erdu_tasks.names import RETRY_STATUS as _RETRY_STATUS, Stage
from erdu_tasks.runtime import Runtime
from erdu_tasks.tasks.publish import hand_on


class ActionRefused(ErduError):
    """A person's action that does not fit the incident's state; the message says why."""


@dataclass(frozen=True)
class ActionDone:
    """What happened, in one line."""

    incident_id: str
    message: str
    changed: bool = True   # False: the incident was already so (a repeated action records nothing)


def _load(conn, incident_id: str):
    incident = store.get_incident(conn, incident_id, for_update=True)
    if incident is None:
        raise ActionRefused(f"no incident {incident_id}")
    return incident


def acknowledge(rt: Runtime, incident_id: str, who: str, *, kind: str = "person") -> ActionDone:
    """Acknowledge: an escalated incident becomes acknowledged; any open one gets acknowledged_at.

    Idempotent: an incident already acknowledged (and not escalated again since) records nothing more.
    kind is "person" for people and "source" for an alert source (Alertmanager, PagerDuty) acting for one.
    """
    with rt.db.transaction() as conn:
        incident = _load(conn, incident_id)
        if incident.status not in OPEN_STATUSES:
            raise ActionRefused(f"{incident_id} is {incident.status.value}: nothing to acknowledge")
        if incident.status is not Status.ESCALATED and incident.acknowledged_at is not None:
            return ActionDone(incident_id, f"{incident_id} was already acknowledged", changed=False)
        if incident.status is Status.ESCALATED:
            store.transition(conn, incident_id, expected=[Status.ESCALATED], to=Status.ACKNOWLEDGED,
                             actor=f"{kind}:{who}", what=f"acknowledged by {who}")
        else:
            conn.execute("UPDATE incidents SET acknowledged_at = coalesce(acknowledged_at, now()) WHERE id = %s",
                         (incident_id,))
            store.add_timeline(conn, incident_id, actor=f"{kind}:{who}", what=f"acknowledged by {who}")
    return ActionDone(incident_id, f"{incident_id} acknowledged by {who}")


def resolve(rt: Runtime, incident_id: str, who: str, note: str | None = None, *, kind: str = "person") -> ActionDone:
    """Resolve by hand; the resolver still writes the report and learns (human-resolved when kind is person)."""
    with rt.db.transaction() as conn:
        incident = _load(conn, incident_id)
        if incident.status not in OPEN_STATUSES:
            raise ActionRefused(f"{incident_id} is already {incident.status.value}")
        updates = {"resolved_by": f"{kind}:{who}", "auto_resolved": False}
        if note:
            updates["root_cause"] = incident.root_cause or note
        store.transition(conn, incident_id, expected=[incident.status], to=Status.RESOLVED, actor=f"{kind}:{who}",
                         what=f"resolved by {who}" + (f": {note}" if note else ""), updates=updates,
                         details={"note": note} if note else None)
    hand_on(Stage.RESOLVE, incident_id)
    return ActionDone(incident_id, f"{incident_id} resolved by {who}; report follows")


def approve(rt: Runtime, incident_id: str, who: str) -> ActionDone:
    """Approve a parked fix: awaiting_approval -> fixing, and the fixer resumes."""
    with rt.db.transaction() as conn:
        incident = _load(conn, incident_id)
        if incident.status is not Status.AWAITING_APPROVAL:
            raise ActionRefused(f"{incident_id} is {incident.status.value}, not awaiting approval")
        fix = {**(incident.fix or {}), "approved_by": who}
        store.transition(conn, incident_id, expected=[Status.AWAITING_APPROVAL], to=Status.FIXING,
                         actor=f"person:{who}", what=f"fix approved by {who}", updates={"fix": fix})
    hand_on(Stage.FIX, incident_id)
    return ActionDone(incident_id, f"{incident_id} approved by {who}; fixer resumes")


def retry(rt: Runtime, incident_id: str, who: str) -> ActionDone:
    """Re-drive an escalated incident from the stage that failed (a new fix attempt if that was the fix)."""
    with rt.db.transaction() as conn:
        incident = _load(conn, incident_id)
        row = conn.execute("SELECT stage FROM escalations WHERE incident_id = %s ORDER BY id DESC LIMIT 1",
                           (incident_id,)).fetchone()
        stage = Stage((row or {}).get("stage") or Stage.FIX)
        if incident.status in (Status.ESCALATED, Status.ACKNOWLEDGED):
            if stage is Stage.RESOLVE:
                raise ActionRefused(f"{incident_id} failed while closing; use `erdu incidents resolve`")
            target = _RETRY_STATUS.get(stage, Status.INVESTIGATING)
            updates = {}
            if stage is Stage.FIX:
                fix = dict(incident.fix or {})
                updates["fix"] = {"attempt": int(fix.get("attempt", 1)) + 1, "previous": fix}
            store.transition(conn, incident_id, expected=[incident.status], to=target, actor=f"person:{who}",
                             what=f"retry from {stage} by {who}", updates=updates)
        elif incident.status is Status.RESOLVED:
            stage = Stage.RESOLVE
        else:
            raise ActionRefused(f"{incident_id} is {incident.status.value}: only escalated incidents are retried")
        conn.execute("UPDATE failed_tasks SET retried_at = now() WHERE incident_id = %s AND retried_at IS NULL",
                     (incident_id,))
    hand_on(stage, incident_id)
    return ActionDone(incident_id, f"{incident_id} re-driven from {stage}")


def silence_service(rt: Runtime, incident_id: str, who: str, duration: timedelta, *,
                    now: datetime | None = None) -> ActionDone:
    """Silence the incident's service from now for duration (cut to escalation.silences.max_duration);
    nothing new when a silence of that service already lasts as long. The incident's timeline says so."""
    now = now or datetime.now(timezone.utc)
    max_duration = rt.settings.escalation.silences.max_duration
    ends = now + min(duration, max_duration)
    with rt.db.transaction() as conn:
        incident = _load(conn, incident_id)
        if not incident.service:
            raise ActionRefused(f"{incident_id} names no service, so there is nothing to silence")
        try:
            matchers = (silences.Matcher.build("service", "=", incident.service),)
        except silences.SilenceError as exc:
            raise ActionRefused(f"{incident_id}'s service cannot be silenced: {exc}") from None
        for held in silences.active_silences(conn, now):
            if held.matchers == matchers and not held.active_during and held.ends_at >= ends:
                return ActionDone(incident_id, f"{incident.service} is already silenced until "
                                  f"{held.ends_at:%Y-%m-%d %H:%M} UTC ({held.id})", changed=False)
        try:
            created = silences.add_silence(conn, matchers, starts_at=now, ends_at=ends, author=who,
                                           comment=f"silenced by {who} from {incident_id}", now=now,
                                           max_duration=max_duration)
        except silences.SilenceError as exc:
            raise ActionRefused(str(exc)) from None
        store.add_timeline(conn, incident_id, actor=f"person:{who}",
                           what=f"service {incident.service} silenced by {who} until {ends:%Y-%m-%d %H:%M} UTC",
                           details={"silence": created.id, "ends_at": ends.isoformat()})
    return ActionDone(incident_id, f"{incident.service} silenced by {who} until {ends:%Y-%m-%d %H:%M} UTC "
                      f"({created.id})")


ACTIONS = {"ack": acknowledge, "resolve": resolve, "approve": approve, "retry": retry}
"""A person's actions by name: what the CLI's and the API's incident actions call, through `act`."""


def act(rt: Runtime, name: str, incident_id: str, who: str, note: str | None = None) -> ActionDone:
    """Run a person's action; a note goes with it (the resolve note is the root cause if none is known;
    on the other actions it is written on the timeline right after the action, by the same person)."""
    if name == "resolve":
        return resolve(rt, incident_id, who, note)
    done = ACTIONS[name](rt, incident_id, who)
    if note:
        with rt.db.transaction() as conn:
            store.add_timeline(conn, incident_id, actor=f"person:{who}", what=f"note by {who} ({name}): {note}",
                               details={"note": note, "action": name})
    return done
