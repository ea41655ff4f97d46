"""What probes, system and Celery checks share: a condition's state in Postgres and the way to report it.

A condition (a probe, "cpu on host x", "no fixer worker") is failing or not on each run.
`step` is the pure decision: a failure becomes an incident only after `failures_needed`
failures in a row that have lasted `sustained_for` seconds; the first pass after an
incident is a recovery. The state lives in the `monitor_state` table and is written in the
same transaction as the incident upsert, so a crash never counts a failure twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from erdu_tasks.store import incidents as store
from erdu_tasks.ingest.accept import IngestResult, IngestRuntime, accept, dedup_fingerprint
from erdu_tasks.model import Event, Status


class Verdict(StrEnum):
    """What one run of a check means for its condition."""

    OK = "ok"
    PENDING = "pending"          # failing, not yet long enough to be an incident
    FIRING = "firing"            # failing long enough: report it (each run bumps the incident)
    RECOVERED = "recovered"      # passing again after it fired


@dataclass(frozen=True)
class Condition:
    """The remembered state of one condition."""

    key: str
    failures: int = 0
    breached_since: datetime | None = None
    firing: bool = False
    incident_id: str | None = None
    recoveries: int = 0
    last_status: str | None = None
    last_detail: str | None = None


def step(cond: Condition, failing: bool, now: datetime, *, failures_needed: int = 1,
         sustained_for: float = 0.0, detail: str | None = None) -> tuple[Verdict, Condition]:
    """Decide what this run means and return the condition's next state."""
    if failing:
        since = cond.breached_since or now
        failures = cond.failures + 1
        fire = failures >= failures_needed and (now - since).total_seconds() >= sustained_for
        verdict = Verdict.FIRING if fire else Verdict.PENDING
        return verdict, replace(cond, failures=failures, breached_since=since, firing=cond.firing or fire,
                                last_status="failing", last_detail=detail)
    if cond.firing:
        return Verdict.RECOVERED, replace(cond, failures=0, breached_since=None, firing=False,
                                          recoveries=cond.recoveries + 1, last_status="ok", last_detail=detail)
    return Verdict.OK, replace(cond, failures=0, breached_since=None, last_status="ok", last_detail=detail)


def load_conditions(conn: psycopg.Connection, keys: Sequence[str]) -> dict[str, Condition]:
    """The stored state of each key (locked for this transaction); a fresh one for unknown keys."""
    for key in sorted(keys):  # insert-then-lock in key order: racing runs never deadlock
        conn.execute("INSERT INTO monitor_state (key) VALUES (%s) ON CONFLICT DO NOTHING", (key,))
    rows = conn.execute(
        "SELECT key, failures, breached_since, firing, incident_id, recoveries, last_status, last_detail"
        " FROM monitor_state WHERE key = ANY(%s) ORDER BY key FOR UPDATE", (list(keys),)).fetchall()
    found = {r["key"]: Condition(**r) for r in rows}
    return {k: found.get(k, Condition(k)) for k in keys}


def save_condition(conn: psycopg.Connection, cond: Condition, *, checked_ok: bool) -> None:
    """Write a condition back (inside the transaction that loaded it)."""
    conn.execute(
        """
        UPDATE monitor_state SET failures = %s, breached_since = %s, firing = %s, incident_id = %s,
               recoveries = %s, last_status = %s, last_detail = %s, last_checked_at = now(),
               last_ok_at = CASE WHEN %s THEN now() ELSE last_ok_at END,
               last_failure_at = CASE WHEN %s THEN last_failure_at ELSE now() END
        WHERE key = %s
        """,
        (cond.failures, cond.breached_since, cond.firing, cond.incident_id, cond.recoveries, cond.last_status,
         (cond.last_detail or "")[:2000], checked_ok, checked_ok, cond.key),
    )


def report(conn: psycopg.Connection, events: Sequence[Event], rt: IngestRuntime,
           *, top_details: dict[str, dict[str, Any]] | None = None) -> IngestResult:
    """Accept events through the one ingest entry inside `conn`'s transaction.

    `top_details` maps a dedup_key to fields merged into a NEW incident's error_details (e.g.
    the probe's check, so the fixer can re-run it as validation).
    """
    if not events:
        return IngestResult([], 0)
    result = accept(conn, events, rt)
    by_fp = {dedup_fingerprint(k): v for k, v in (top_details or {}).items()}
    for outcome in result.outcomes:
        extra = by_fp.get(outcome.fingerprint)
        if outcome.created and extra:
            conn.execute("UPDATE incidents SET error_details = error_details || %s WHERE id = %s",
                         (Jsonb(extra), outcome.incident_id))
    return result


RESOLVABLE = (Status.ESCALATED, Status.ACKNOWLEDGED)
"""The statuses a recovery resolves: the incident is with people, no stage of ERDU is working on it."""


def record_recovery(conn: psycopg.Connection, cond: Condition, what: str, details: dict[str, Any], *,
                    resolve: bool = False) -> str | None:
    """Put a recovery on the incident the condition opened (if any); with `resolve`, an escalated or
    acknowledged incident is resolved by it (as Alertmanager's resolved notifications do). Returns the
    id of an incident resolved now (the resolver closes it and tells everyone notified)."""
    if not cond.incident_id:
        return None
    store.add_timeline(conn, cond.incident_id, actor="monitor", what=what, details=details)
    if not resolve:
        return None
    current = store.get_incident(conn, cond.incident_id, for_update=True)
    if current is None or current.status not in RESOLVABLE:
        return None
    moved = store.transition(conn, current.id, expected=list(RESOLVABLE), to=Status.RESOLVED, actor="monitor",
                             what=f"resolved by the monitor: {cond.key} passes again"[:500],
                             updates={"resolved_by": f"monitor:{cond.key}"[:200], "auto_resolved": False},
                             details=details)
    return current.id if moved is not None else None


@dataclass(frozen=True)
class Observation:
    """One condition as seen by one run: failing or not, and the event to report while it fires."""

    key: str
    failing: bool
    detail: str
    event: Event | None = None          # must carry a dedup_key (the condition's stable identity)
    failures_needed: int = 1
    sustained_for: float = 0.0
    top_details: dict[str, Any] | None = None
    data: dict[str, Any] | None = None  # for the timeline of a recovery / a relapse
    repeat: bool = True                 # report every firing run (bumps occurrences) or only the first
    resolve_on_recovery: bool = False   # a recovery resolves the incident when it is with people


@dataclass(frozen=True)
class Decision:
    """What became of one observation."""

    observation: Observation
    verdict: Verdict
    condition: Condition
    created: bool = False


def _keep_the_repaired_incident(conn: psycopg.Connection, stepped: list[tuple[Observation, Verdict, Condition, bool]]
                                ) -> list[tuple[Observation, Verdict, Condition, bool]]:
    """A condition that goes on failing in another way (another dedup key: a probe's 500 turning into a
    refused connection) while ERDU is repairing the incident it opened is the repair's own effect (a
    restart refuses connections for a moment): it is counted on that incident (its occurrences), not
    opened as a new one. Once the incident is out of the fixer's hands, a new way of failing is a new
    incident again."""
    still_firing = [i for i, (obs, verdict, cond, was) in enumerate(stepped)
                    if verdict is Verdict.FIRING and was and cond.incident_id and obs.event is not None]
    if not still_firing:
        return stepped
    keys = {r["id"]: r["dedup_key"] for r in conn.execute(
        "SELECT id, error_details->>'dedup_key' AS dedup_key FROM incidents WHERE id = ANY(%s) AND status = %s",
        ([stepped[i][2].incident_id for i in still_firing], Status.FIXING.value)).fetchall()}
    kept = list(stepped)
    for i in still_firing:
        obs, verdict, cond, was = stepped[i]
        key = keys.get(cond.incident_id)
        if key and obs.event.dedup_key != key:
            kept[i] = (replace(obs, event=obs.event.model_copy(update={"dedup_key": key})), verdict, cond, was)
    return kept


def observe(db: Any, observations: Sequence[Observation], rt: IngestRuntime,
            notify: Any, now: datetime, *, resolved: Any = None) -> list[Decision]:
    """Step every condition, report the firing ones and record recoveries, all in one transaction.

    After the commit, `notify(id)` hands on each new incident and `resolved(id)` each incident a
    recovery resolved (when the observation asks for it and a callback is given)."""
    closed: list[str] = []
    if not observations:
        return []
    decisions: list[Decision] = []
    with db.transaction() as conn:
        conds = load_conditions(conn, [o.key for o in observations])
        stepped = []
        for obs in observations:
            verdict, cond = step(conds[obs.key], obs.failing, now, failures_needed=obs.failures_needed,
                                 sustained_for=obs.sustained_for, detail=obs.detail)
            stepped.append((obs, verdict, cond, conds[obs.key].firing))
        stepped = _keep_the_repaired_incident(conn, stepped)
        firing = [o for o, v, _, was in stepped
                  if v is Verdict.FIRING and o.event is not None and (o.repeat or not was)]
        top = {o.event.dedup_key: o.top_details for o in firing if o.top_details and o.event.dedup_key}
        accepted = report(conn, [o.event for o in firing], rt, top_details=top)
        for obs, verdict, cond, was_firing in stepped:
            created = False
            if verdict is Verdict.FIRING and obs.event is not None and obs.event.dedup_key:
                outcome = accepted.for_dedup_key(obs.event.dedup_key)
                if outcome is not None:
                    created = outcome.created
                    if not was_firing and not created:
                        store.add_timeline(conn, outcome.incident_id, actor="monitor",
                                           what=f"failing again: {obs.detail}"[:500], details=obs.data or {})
                    cond = replace(cond, incident_id=outcome.incident_id)
            elif verdict is Verdict.RECOVERED:
                done = record_recovery(conn, cond, f"recovered: {obs.detail}"[:500], obs.data or {},
                                       resolve=obs.resolve_on_recovery and resolved is not None)
                if done is not None:
                    closed.append(done)
            save_condition(conn, cond, checked_ok=not obs.failing)
            decisions.append(Decision(obs, verdict, cond, created))
    for d in decisions:
        if d.created and d.condition.incident_id:
            notify(d.condition.incident_id)
    for incident_id in closed:
        resolved(incident_id)
    return decisions
