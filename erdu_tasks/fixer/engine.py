"""The fixer's engine: matching runbooks, their recent runs, keyed steps (run once each), validation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from erdu_tasks.fixer import capture as capturing
from erdu_tasks.fixer.actions import destroys_state, run_step
from erdu_tasks.fixer.actions.base import ActionResult
from erdu_tasks.fixer.checks import check_from_catalog, check_from_incident, run_check
from erdu_tasks.fixer.urlguard import DEFAULT_POLICY, UrlPolicy
from erdu_tasks.catalog import CATALOG_FIELDS
from erdu_tasks.errors import PermanentError
from erdu_tasks.model import Incident
from erdu_tasks.roles.fixer import RunCount
from erdu_tasks.store import incidents as store
from erdu_tasks.store.db import later
from erdu_tasks.fixer.runbooks import MatchInput, Runbook, RunbookSet

def load_runbooks(rt: Any) -> RunbookSet:
    """The runbook set for this process (the Runtime keeps it, reloaded when a file in the directory changes)."""
    return rt.runbooks


def match_input(incident: Incident) -> MatchInput:
    """The incident fields a runbook matcher may look at."""
    return MatchInput.from_incident(incident)


def matching_runbooks(rt: Any, incident: Incident, stats: dict[str, tuple[int, int]] | None = None) -> list[Runbook]:
    """Runbooks whose matcher fits the incident, best first (learned success rate, then narrowness)."""
    rates = {name: s / a for name, (a, s) in (stats or {}).items() if a}
    return load_runbooks(rt).match(match_input(incident), rates)


def allowed_fields(incident: Incident, catalog: Any = None) -> dict[str, str]:
    """The validated incident fields runbook parameters may use, and its service's catalog fields
    (`catalog.systemd`...); never message text. Every value is checked again when rendered."""
    fields = {}
    if incident.service:
        fields["service"] = incident.service
    if incident.host:
        fields["host"] = incident.host
    entry = catalog.services.get(incident.service) if catalog is not None and incident.service else None
    if entry is not None:
        for name in CATALOG_FIELDS:
            value = entry.field_value(name)
            if value is not None:
                fields[f"catalog.{name}"] = value
    return fields


def serialize_fixes_of(conn: psycopg.Connection, incident_id: str) -> None:
    """Plan one fix of a service at a time: a transaction-scoped lock on the incident's service (one lock for
    every incident without a service), held until the plan (and its claimed run) commits, so concurrent
    fixers of one service see each other's runs and the rate limit holds. Fixes of other services never
    wait; the lock is not held while actions run.

    Postgres takes the service from the incident's row, so the fix task sends this with the locked read of
    the incident, before it knows the service. Not waited for."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('erdu:fix:' || coalesce(service, '')))"
                 " FROM incidents WHERE id = %s", (incident_id,))


def run_counts_later(conn: psycopg.Connection, runbooks: list[Runbook], restarting: list[Runbook],
                     incident_id: str, *, now: datetime
                     ) -> Callable[[], tuple[dict[str, RunCount], dict[str, RunCount]]]:
    """The recent runs of `runbooks` on the incident's service, counted by Postgres: per runbook, its runs for
    other incidents within its own limit window ending at `now` (how many, and the latest start); and per
    restart runbook among them, the service's restarts by any of the `restarting` runbooks in that window
    (the back-off of a restart counts those). A run that found nothing to do is not counted.

    Keyed by the incident's id, the service read by Postgres, so the fix task sends it with the locked read of
    the incident; sent now, read when called."""
    if not runbooks:
        return lambda: ({}, {})
    # `service = x` or both NULL, not IS NOT DISTINCT FROM, so the (runbook, service, started_at) index applies.
    counted = ("SELECT w.runbook, count(r.started_at) AS runs, max(r.started_at) AS latest"
               " FROM (SELECT service FROM incidents WHERE id = %(id)s) AS i"
               " CROSS JOIN unnest(%(names)s::text[], %(windows)s::float8[]) AS w(runbook, secs)"
               " LEFT JOIN runbook_runs r ON r.runbook {which}"
               " AND (r.service = i.service OR (i.service IS NULL AND r.service IS NULL))"
               " AND r.incident_id <> %(id)s AND r.outcome IS DISTINCT FROM 'not_needed'"
               " AND r.started_at > %(now)s - make_interval(secs => w.secs) GROUP BY w.runbook")
    params = {"id": incident_id, "now": now}
    own = conn.execute(counted.format(which="= w.runbook"),
                       {**params, "names": [rb.name for rb in runbooks],
                        "windows": [float(rb.limits.per_seconds) for rb in runbooks]})
    restarts_of = [rb for rb in runbooks if rb.restarts]
    restarts = conn.execute(counted.format(which="= ANY(%(restarting)s)"),
                            {**params, "names": [rb.name for rb in restarts_of],
                             "windows": [float(rb.limits.per_seconds) for rb in restarts_of],
                             "restarting": [rb.name for rb in restarting]}) if restarts_of and restarting else None

    def read(cur: Any) -> dict[str, RunCount]:
        return {r["runbook"]: RunCount(int(r["runs"]), r["latest"]) for r in cur.fetchall()} if cur else {}

    return later(lambda: (read(own), read(restarts)))


def claim_run(conn: psycopg.Connection, incident: Incident, attempt: int, runbook: Runbook) -> None:
    """Record that this attempt of the fix runs (counts toward the rate limit)."""
    conn.execute(
        "INSERT INTO runbook_runs (incident_id, attempt, runbook, service, fingerprint) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (incident_id, attempt) DO NOTHING",
        (incident.id, attempt, runbook.name, incident.service, incident.fingerprint),
    )


@dataclass(frozen=True)
class StepOutcome:
    """One step's result, as stored and reported."""

    step: str
    action: str
    ok: bool | None
    detail: str
    duration: float
    output: dict[str, Any]
    reused: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {"step": self.step, "action": self.action, "ok": self.ok, "detail": self.detail,
                "duration": self.duration, "output": self.output, "reused": self.reused}


def claim_step_later(conn: psycopg.Connection, incident: Incident, key: str, runbook: Runbook,
                     action: str) -> Callable[[], StepOutcome | None]:
    """Claim a step's key, sent now. Read once the claim's transaction has committed, the reader gives None
    when this claim won (run the step), else the earlier claim's outcome, to reuse: its stored result, or
    "unknown" when the worker that claimed it was lost before its result was stored."""
    claim = conn.execute(
        "INSERT INTO action_runs (incident_id, step_key, runbook, action) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (incident_id, step_key) DO NOTHING RETURNING step_key",
        (incident.id, key, runbook.name, action),
    )
    earlier = conn.execute("SELECT ok, result, finished_at FROM action_runs WHERE incident_id = %s"
                           " AND step_key = %s", (incident.id, key))

    def read() -> StepOutcome | None:
        if claim.fetchone() is not None:   # answered with the commit: reading it sends nothing
            return None
        row = earlier.fetchone()
        if row["finished_at"] is None:
            return StepOutcome(key, action, None,
                               "started before but its worker was lost; not run again (outcome unknown, "
                               "validation decides)", 0.0, {}, reused=True)
        result = row["result"] or {}
        return StepOutcome(key, action, row["ok"], result.get("detail", ""), result.get("duration", 0.0),
                           result.get("output", {}), reused=True)

    return later(read)


class KeyedSteps:
    """A fix's steps, each run at most once per key (its claim in action_runs), with as few commits as that
    allows.

    A step's claim is committed before the step runs: with the plan's commit for a claim sent by the fix
    task (`claimed`), else together with the previous step's result. A step's result is stored with the
    next step's claim, or, for the last step, by the transaction that settles the fix (store_pending), so
    a fix of one step commits twice in all. Until its result is stored, a worker lost in between leaves the
    claim without one: the redelivered fix does not run the step again and its validation decides.
    """

    def __init__(self, db: Any, incident: Incident, runbook: Runbook, *, dry_run: bool, redis_url: str | None,
                 url_policy: UrlPolicy = DEFAULT_POLICY, catalog: Any = None,
                 claimed: dict[str, Callable[[], StepOutcome | None]] | None = None) -> None:
        self.db, self.incident, self.runbook = db, incident, runbook
        self.dry_run, self.redis_url, self.url_policy, self.catalog = dry_run, redis_url, url_policy, catalog
        self._claimed = dict(claimed or {})
        self._pending: list[tuple[str, ActionResult]] = []

    def run(self, key: str, step: Any) -> StepOutcome:
        """Run the step unless its key was claimed before (then its earlier outcome)."""
        reader = self._claimed.pop(key, None)
        if reader is None:
            with self.db.pipelined() as conn:
                self.store_pending(conn)
                reader = claim_step_later(conn, self.incident, key, self.runbook, step.action)
            self._pending.clear()
        earlier = reader()
        if earlier is not None:
            return earlier
        result: ActionResult = run_step(step, allowed_fields(self.incident, self.catalog),
                                        dry_run=self.dry_run or self.runbook.dry_run,
                                        redis_url_for_cache=self.redis_url,
                                        idempotency_key=f"{self.incident.id}:{key}", url_policy=self.url_policy)
        self._pending.append((key, result))
        return StepOutcome(key, step.action, result.ok, result.detail, result.duration, result.output)

    def store_pending(self, conn: psycopg.Connection) -> None:
        """Send the results not stored yet, to be committed with this transaction (sent again by a later
        transaction if this one does not commit)."""
        for key, result in self._pending:
            conn.execute("UPDATE action_runs SET finished_at = now(), ok = %s, result = %s"
                         " WHERE incident_id = %s AND step_key = %s",
                         (result.ok, Jsonb(result.as_dict()), self.incident.id, key))


def capture_target(catalog: Any, incident: Incident, step: Any) -> tuple[dict[str, Any], list[str], bool]:
    """Where to find the service's process and logs (its catalog entry, then the step's own target), and
    whether to capture at all."""
    entry = catalog.services.get(incident.service) if incident.service else None
    target: dict[str, Any] = {}
    if entry is not None:
        target.update({k: getattr(entry, k) for k in ("pid_file", "process", "supervisor", "systemd", "python")
                       if getattr(entry, k) is not None})
    try:   # the restart step's supervisor program or systemd unit, rendered as it would run
        from erdu_tasks.fixer.actions import prepare_step

        _, params = prepare_step(step, allowed_fields(incident, catalog))
        for key in ("supervisor", "systemd", "supervisor_conf"):
            if getattr(params, key, None) and key not in target:
                target[key] = getattr(params, key)
    except PermanentError:
        pass
    logs = [entry.log_file] if entry is not None and entry.log_file else []
    return target, logs, entry is None or entry.capture


def monitor_log_files(monitors: Any, service: str | None) -> list[str]:
    """The files (or globs) the log monitor tails for this service."""
    logs = getattr(monitors, "logs", None)
    if logs is None or not service:
        return []
    return [f.path for f in logs.files if f.service == service]


def capture_before(db: Any, catalog: Any, monitors: Any, incident: Incident, attempt: int, step: Any
                   ) -> dict[str, Any] | None:
    """Before a step that destroys state: capture the service and store it on the incident (`fix.capture`)
    and its timeline at once, so a fixer lost during the restart still leaves it. Once per attempt."""
    if not destroys_state(step.action):
        return None
    earlier = (incident.fix or {}).get("capture")
    if isinstance(earlier, dict) and earlier.get("attempt") == attempt:
        return earlier
    target, logs, wanted = capture_target(catalog, incident, step)
    if not wanted:
        return None
    found = capturing.capture_service(incident.service, target,
                                      log_files=logs or monitor_log_files(monitors, incident.service),
                                      before=step.action)
    found["attempt"] = attempt
    with db.transaction() as conn:
        conn.execute("UPDATE incidents SET fix = coalesce(fix, '{}'::jsonb) || jsonb_build_object('capture', %s::jsonb)"
                     " WHERE id = %s", (Jsonb(found), incident.id))
        first = capturing.summary(found).splitlines()[0]
        store.add_timeline(conn, incident.id, actor="fixer", what=f"captured before {step.action}: {first}"[:500],
                           details={"capture": {k: found.get(k) for k in ("found_by", "process_error", "duration")},
                                    "thread_dump": bool((found.get("thread_dump") or {}).get("ok"))})
    incident.fix = {**(incident.fix or {}), "capture": found}
    return found


def capture_crash_loop(db: Any, catalog: Any, monitors: Any, incident: Incident, runbook: Runbook) -> dict[str, Any]:
    """The crash-loop circuit breaker tripped: capture the service as it is now (nothing is restarted), and keep
    the capture taken before its latest restart, when it was last seen alive. Stored on the incident's `fix`."""
    step = next((s for s in runbook.actions if destroys_state(s.action)), runbook.actions[0])
    target, logs, wanted = capture_target(catalog, incident, step)
    found: dict[str, Any] = {"before": "escalation (crash loop)", "thread_dump": {"ok": False,
                             "reason": "the catalog turns capture off for this service"}}
    if wanted:
        found = capturing.capture_service(incident.service, target,
                                          log_files=logs or monitor_log_files(monitors, incident.service),
                                          before="escalation (crash loop: no restart)")
    with db.transaction() as conn:
        earlier = conn.execute(
            "SELECT i.id, i.fix->'capture' AS capture FROM runbook_runs r JOIN incidents i ON i.id = r.incident_id"
            " WHERE r.runbook = %s AND r.service IS NOT DISTINCT FROM %s AND r.incident_id <> %s"
            " AND i.fix ? 'capture' ORDER BY r.started_at DESC LIMIT 1",
            (runbook.name, incident.service, incident.id)).fetchone()
        record: dict[str, Any] = {"crash_loop": {"runbook": runbook.name}, "capture": found}
        if earlier is not None:
            record["previous_capture"] = {**earlier["capture"], "incident_id": earlier["id"]}
        conn.execute("UPDATE incidents SET fix = coalesce(fix, '{}'::jsonb) || %s::jsonb WHERE id = %s",
                     (Jsonb(record), incident.id))
        first = capturing.summary(found).splitlines()[0]
        store.add_timeline(conn, incident.id, actor="fixer", what=f"captured (crash loop, no restart): {first}"[:500],
                           details={"previous_capture": earlier["id"] if earlier else None,
                                    "thread_dump": bool((found.get("thread_dump") or {}).get("ok"))})
    incident.fix = {**(incident.fix or {}), **record}
    return found


def precheck(runbook: Runbook, incident: Incident, db: Any = None, catalog: Any = None,
             url_policy: UrlPolicy = DEFAULT_POLICY) -> dict[str, Any] | None:
    """The runbook's check once, before any action (after a back-off): passing means the service is already
    well, so nothing runs. None for a runbook whose check watches a window (quiet, log_absent) or has none."""
    spec = runbook.validation
    if spec is None or spec.check == "quiet" or hasattr(spec, "window"):
        return None
    once = spec.model_copy(update={"attempts": 1, "delay": 0.0, "stable_for": 0.0})
    result = validate(runbook.model_copy(update={"validation": once}), incident, db, catalog, url_policy)
    if result["ok"]:
        result["detail"] = f"already passing after the back-off, nothing run: {result['detail']}"[:500]
    return result


def validate(runbook: Runbook, incident: Incident, db: Any = None, catalog: Any = None,
             url_policy: UrlPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    """Re-run the check that proves the fix; a runbook without one is validated by its steps alone."""
    if runbook.validation is None:
        return {"ok": True, "detail": "no validation check in runbook; steps succeeded", "duration": 0.0}
    if runbook.validation.check == "quiet":   # a quiet window is a hold: stable_for lengthens it
        return _quiet(runbook.validation.window + runbook.stable_for, incident, db)
    spec = runbook.validation
    try:
        if spec.check == "from_incident":  # the probe (or other check) that detected the incident
            spec = check_from_incident(spec, incident.error_details)
        elif spec.check == "from_catalog":  # the service's own health check, from the catalog
            spec = check_from_catalog(spec, catalog, incident.service)
    except PermanentError as exc:
        return {"ok": False, "detail": str(exc), "duration": 0.0}
    result = run_check(spec, allowed_fields(incident, catalog), stable_for=runbook.stable_for,
                       url_policy=url_policy)
    return {"ok": bool(result.ok), "detail": result.detail, "duration": result.duration,
            "stable_for": runbook.stable_for}


def _occurrences(db: Any, incident_id: str) -> int:
    with db.transaction() as conn:
        row = conn.execute("SELECT occurrences FROM incidents WHERE id = %s", (incident_id,)).fetchone()
    return int(row["occurrences"]) if row else 0


def _quiet(window: float, incident: Incident, db: Any) -> dict[str, Any]:
    """Passes when no new occurrence of the incident's error arrives during the window."""
    import time

    started = time.monotonic()
    before = _occurrences(db, incident.id)
    time.sleep(window)
    after = _occurrences(db, incident.id)
    duration = time.monotonic() - started
    if after > before:
        return {"ok": False, "duration": duration,
                "detail": f"error recurred {after - before} time(s) within {window:g} s after the fix"}
    return {"ok": True, "duration": duration, "detail": f"no recurrence for {window:g} s after the fix"}
