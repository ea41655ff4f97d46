"""The fixer's engine: matching runbooks, their recent runs, keyed steps (run once each), validation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from erdu_tasks.fixer.actions import run_step
from erdu_tasks.fixer.actions.base import ActionResult
from erdu_tasks.fixer.checks import check_from_incident, run_check
from erdu_tasks.fixer.urlguard import DEFAULT_POLICY, UrlPolicy
from erdu_tasks.errors import PermanentError
from erdu_tasks.model import Incident
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


def allowed_fields(incident: Incident) -> dict[str, str]:
    """The validated incident fields runbook parameters may use; never message text."""
    fields = {}
    if incident.service:
        fields["service"] = incident.service
    if incident.host:
        fields["host"] = incident.host
    return fields


def recent_runs(conn: psycopg.Connection, runbooks: list[Runbook], service: str | None, *,
                exclude: str) -> dict[str, tuple[datetime, ...]]:
    """Runbook name -> start times of its runs on this service for other incidents, within its limit window."""
    if not runbooks:
        return {}
    windows = {rb.name: float(rb.limits.per_seconds) for rb in runbooks}
    # `service = x` or `service IS NULL`, not IS NOT DISTINCT FROM, so the (runbook, service, started_at) index applies.
    same_service = "service IS NULL" if service is None else "service = %(service)s"
    rows = conn.execute(
        "SELECT runbook, started_at FROM runbook_runs"
        f" WHERE runbook = ANY(%(runbooks)s) AND {same_service} AND incident_id <> %(exclude)s"
        " AND started_at > now() - make_interval(secs => %(window)s) ORDER BY started_at",
        {"runbooks": list(windows), "service": service, "exclude": exclude, "window": max(windows.values())},
    ).fetchall()
    out: dict[str, list[datetime]] = {name: [] for name in windows}
    for r in rows:
        out[r["runbook"]].append(r["started_at"])
    return {name: tuple(times) for name, times in out.items()}


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


def run_keyed(db: Any, incident: Incident, key: str, runbook: Runbook, step: Any, *, dry_run: bool,
              redis_url: str | None, url_policy: UrlPolicy = DEFAULT_POLICY) -> StepOutcome:
    """Run a step at most once per key: a redelivered fix reuses the stored result instead of acting again."""
    with db.transaction() as conn:
        claimed = conn.execute(
            "INSERT INTO action_runs (incident_id, step_key, runbook, action) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (incident_id, step_key) DO NOTHING RETURNING step_key",
            (incident.id, key, runbook.name, step.action),
        ).fetchone()
        if claimed is None:
            row = conn.execute("SELECT ok, result, finished_at FROM action_runs WHERE incident_id = %s"
                               " AND step_key = %s", (incident.id, key)).fetchone()
    if claimed is None:
        if row["finished_at"] is None:
            return StepOutcome(key, step.action, None,
                               "started before but its worker was lost; not run again (outcome unknown, "
                               "validation decides)", 0.0, {}, reused=True)
        result = row["result"] or {}
        return StepOutcome(key, step.action, row["ok"], result.get("detail", ""), result.get("duration", 0.0),
                           result.get("output", {}), reused=True)
    result: ActionResult = run_step(step, allowed_fields(incident), dry_run=dry_run or runbook.dry_run,
                                    redis_url_for_cache=redis_url, idempotency_key=f"{incident.id}:{key}",
                                    url_policy=url_policy)
    with db.transaction() as conn:
        conn.execute("UPDATE action_runs SET finished_at = now(), ok = %s, result = %s"
                     " WHERE incident_id = %s AND step_key = %s",
                     (result.ok, Jsonb(result.as_dict()), incident.id, key))
    return StepOutcome(key, step.action, result.ok, result.detail, result.duration, result.output)


def validate(runbook: Runbook, incident: Incident, db: Any = None,
             url_policy: UrlPolicy = DEFAULT_POLICY) -> dict[str, Any]:
    """Re-run the check that proves the fix; a runbook without one is validated by its steps alone."""
    if runbook.validation is None:
        return {"ok": True, "detail": "no validation check in runbook; steps succeeded", "duration": 0.0}
    if runbook.validation.check == "quiet":   # a quiet window is a hold: stable_for lengthens it
        return _quiet(runbook.validation.window + runbook.stable_for, incident, db)
    spec = runbook.validation
    if spec.check == "from_incident":  # the probe (or other check) that detected the incident
        try:
            spec = check_from_incident(spec, incident.error_details)
        except PermanentError as exc:
            return {"ok": False, "detail": str(exc), "duration": 0.0}
    result = run_check(spec, allowed_fields(incident), stable_for=runbook.stable_for, url_policy=url_policy)
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
