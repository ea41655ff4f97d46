"""What Postgres remembers: related incidents, pattern history, per-runbook success, learning updates.

The `learning` settings section (its keys and defaults: erdu_tasks/settings/roles.py).

Success rate = successes / attempts of validated fix runs on one fingerprint; below the sample
minimum it is reported as unknown (None), never as 0 % or 100 %.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from erdu_tasks.model import Incident
from erdu_tasks.store.db import later
from erdu_tasks.settings.roles import EvidenceConfig, LearningConfig  # noqa: F401 - the section models, re-exported


def success_rate(attempts: int, successes: int, min_samples: int) -> float | None:
    """successes / attempts, or None when there are fewer attempts than the sample minimum."""
    if attempts < max(1, min_samples):
        return None
    return successes / attempts


def related_incidents(conn: psycopg.Connection, incident: Incident, *, limit: int = 5, min_score: float = 0.3,
                      lookback_days: float = 90) -> list[dict[str, Any]]:
    """Earlier incidents ranked by similarity (see related_incidents_later)."""
    return related_incidents_later(conn, incident, limit=limit, min_score=min_score, lookback_days=lookback_days)()


def related_incidents_later(conn: psycopg.Connection, incident: Incident, *, limit: int = 5, min_score: float = 0.3,
                            lookback_days: float = 90) -> Callable[[], list[dict[str, Any]]]:
    """Earlier incidents ranked by trigram similarity of template and title (pg_trgm), best first.

    score = 1.0 for the same fingerprint, else the better of template and title similarity.
    The search runs over the patterns (incident_patterns, one row per fingerprint with its latest
    template and title, migration 0101): the `limit` patterns nearest by template and the `limit`
    nearest by title (GiST trigram indexes, nearest first), among those seen within the lookback
    window, plus this incident's own; each of those patterns' latest `limit` incidents in the window
    (the fingerprint btree) is scored. So the cost follows the number of patterns, not the years of
    history. The diagnostician stores the result on the incident (`related`) and the resolver re-reads
    only those rows (refresh_related). Sent now, read when called (see db.later).
    """
    created = incident.created_at or datetime.now(timezone.utc)
    cur = conn.execute(
        """
        WITH near AS (
            (SELECT fingerprint FROM incident_patterns WHERE last_created_at > %(since)s
             ORDER BY template <-> %(template)s LIMIT %(limit)s)
            UNION
            (SELECT fingerprint FROM incident_patterns WHERE last_created_at > %(since)s
             ORDER BY title <-> %(title)s LIMIT %(limit)s)
            UNION
            SELECT %(fp)s::text
        ), candidates AS (
            SELECT c.id FROM near CROSS JOIN LATERAL (
                SELECT id FROM incidents WHERE fingerprint = near.fingerprint AND id <> %(id)s
                  AND created_at <= %(created)s AND created_at > %(since)s
                ORDER BY created_at DESC LIMIT %(limit)s) c
        )
        SELECT id, title, status, root_cause, fingerprint = %(fp)s AS same_fingerprint, created_at,
               resolved_by, auto_resolved, fix->>'runbook' AS runbook,
               similarity(template, %(template)s) AS template_similarity,
               similarity(title, %(title)s) AS title_similarity
        FROM incidents JOIN candidates USING (id)
        """,
        {"id": incident.id, "template": incident.template or incident.title, "title": incident.title,
         "fp": incident.fingerprint, "created": created, "since": created - timedelta(days=lookback_days),
         "limit": limit},
    )
    return later(lambda: _ranked(cur.fetchall(), limit=limit, min_score=min_score))


def _ranked(rows: list[dict[str, Any]], *, limit: int, min_score: float) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        tpl, title = float(r["template_similarity"]), float(r["title_similarity"])
        score = 1.0 if r["same_fingerprint"] else max(tpl, title)
        if score < min_score:
            continue
        out.append({"id": r["id"], "title": r["title"], "status": r["status"], "root_cause": r["root_cause"],
                    "score": round(score, 3), "template_similarity": round(tpl, 3),
                    "title_similarity": round(title, 3), "same_fingerprint": bool(r["same_fingerprint"]),
                    "created_at": r["created_at"].isoformat(), "resolved_by": r["resolved_by"],
                    "runbook": r["runbook"], "auto_resolved": bool(r["auto_resolved"])})
    out.sort(key=lambda r: (r["score"], r["created_at"]), reverse=True)
    return out[:limit]


def latest_incidents_of(conn: psycopg.Connection, fingerprints: list[str], *, exclude: str) -> dict[str, str]:
    """Fingerprint -> the latest incident (other than `exclude`) that has it, for the fingerprints that have one."""
    if not fingerprints:
        return {}
    rows = conn.execute(
        "SELECT DISTINCT ON (fingerprint) fingerprint, id FROM incidents WHERE fingerprint = ANY(%s) AND id <> %s"
        " ORDER BY fingerprint, created_at DESC",
        (sorted(set(fingerprints)), exclude),
    ).fetchall()
    return {r["fingerprint"]: r["id"] for r in rows}


def refresh_related(conn: psycopg.Connection, related: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Related incidents found earlier, with their current status, root cause and fix (by primary key).

    The ranking stays as it was found; an incident that no longer exists is dropped.
    """
    return refresh_related_later(conn, related)()


def refresh_related_later(conn: psycopg.Connection,
                          related: list[dict[str, Any]]) -> Callable[[], list[dict[str, Any]]]:
    """refresh_related, sent now and read when called (see db.later)."""
    ids = [r["id"] for r in related if isinstance(r, dict) and isinstance(r.get("id"), str)]
    if not ids:
        return lambda: []
    cur = conn.execute(
        "SELECT id, status, root_cause, resolved_by, auto_resolved, fix->>'runbook' AS runbook FROM incidents"
        " WHERE id = ANY(%s)", (ids,))
    return later(lambda: _refreshed(related, {r["id"]: r for r in cur.fetchall()}))


def _refreshed(related: list[dict[str, Any]], rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in related:
        now = rows.get(r.get("id")) if isinstance(r, dict) else None
        if now is not None:
            out.append({**r, "status": now["status"], "root_cause": now["root_cause"],
                        "resolved_by": now["resolved_by"], "runbook": now["runbook"],
                        "auto_resolved": bool(now["auto_resolved"])})
    return out


def same_situation(conn: psycopg.Connection, incident: Any, *, window_seconds: float,
                   limit: int = 20) -> list[dict[str, Any]]:
    """Other incidents of the incident's service (its probe's, its log's...) created within window_seconds of
    it, either side: one situation seen by several producers. Children of the incident are listed apart."""
    return same_situation_later(conn, incident, window_seconds=window_seconds, limit=limit)()


def same_situation_later(conn: psycopg.Connection, incident: Any, *, window_seconds: float,
                         limit: int = 20) -> Callable[[], list[dict[str, Any]]]:
    """same_situation, sent now and read when called (see db.later)."""
    if not incident.service or window_seconds <= 0 or incident.created_at is None:
        return lambda: []
    cur = conn.execute(
        "SELECT id, status, severity, service, source, title, created_at FROM incidents"
        " WHERE service = %(service)s AND id <> %(id)s AND parent_id IS DISTINCT FROM %(id)s"
        " AND created_at BETWEEN %(at)s - make_interval(secs => %(w)s) AND %(at)s + make_interval(secs => %(w)s)"
        " ORDER BY created_at, id LIMIT %(limit)s",
        {"service": incident.service, "id": incident.id, "at": incident.created_at, "w": window_seconds,
         "limit": limit},
    )
    return later(cur.fetchall)


def pattern(conn: psycopg.Connection, fingerprint: str) -> dict[str, Any] | None:
    """The learned counters of one fingerprint, with its mean time to resolve (None before any)."""
    return pattern_later(conn, fingerprint)()


def pattern_later(conn: psycopg.Connection, fingerprint: str) -> Callable[[], dict[str, Any] | None]:
    """pattern, sent now and read when called (see db.later)."""
    cur = conn.execute("SELECT * FROM error_patterns WHERE fingerprint = %s", (fingerprint,))
    return later(lambda: pattern_of(cur.fetchone()))


def pattern_of(row: dict[str, Any] | None) -> dict[str, Any] | None:
    """An error_patterns row as pattern() returns it."""
    if row is None:
        return None
    resolved = int(row["resolved"])
    return {**row, "mean_time_to_resolve": float(row["total_resolve_seconds"]) / resolved if resolved else None}


def runbook_stats(conn: psycopg.Connection, fingerprint: str) -> dict[str, tuple[int, int]]:
    """runbook -> (attempts, successes) for a fingerprint."""
    return {name: (r["attempts"], r["successes"]) for name, r in runbook_records(conn, fingerprint).items()}


def runbook_records(conn: psycopg.Connection, fingerprint: str) -> dict[str, dict[str, Any]]:
    """runbook -> {attempts, successes, last_outcome, last_attempt_at} for a fingerprint."""
    return runbook_records_later(conn, fingerprint)()


def runbook_records_later(conn: psycopg.Connection, fingerprint: str) -> Callable[[], dict[str, dict[str, Any]]]:
    """runbook_records, sent now and read when called (see db.later)."""
    return _runbook_records(conn.execute(
        "SELECT runbook, attempts, successes, last_outcome, last_attempt_at FROM pattern_action_stats"
        " WHERE fingerprint = %s",
        (fingerprint,),
    ))


def runbook_records_of_incident_later(conn: psycopg.Connection, incident_id: str
                                      ) -> Callable[[], dict[str, dict[str, Any]]]:
    """runbook_records of the incident's fingerprint, read by Postgres from the incident's row (so it can be
    sent before the incident is read); sent now, read when called."""
    return _runbook_records(conn.execute(
        "SELECT runbook, attempts, successes, last_outcome, last_attempt_at FROM pattern_action_stats"
        " WHERE fingerprint = (SELECT fingerprint FROM incidents WHERE id = %s)",
        (incident_id,),
    ))


def _runbook_records(cur: psycopg.Cursor[Any]) -> Callable[[], dict[str, dict[str, Any]]]:
    return later(lambda: {r["runbook"]: {"attempts": int(r["attempts"]), "successes": int(r["successes"]),
                                         "last_outcome": r["last_outcome"], "last_attempt_at": r["last_attempt_at"]}
                          for r in cur.fetchall()})


def last_root_cause(conn: psycopg.Connection, fingerprint: str, *, exclude: str) -> dict[str, Any] | None:
    """The latest earlier incident of this fingerprint with a root cause (for a pattern that skipped diagnosis)."""
    return last_root_cause_later(conn, fingerprint, exclude=exclude)()


def last_root_cause_later(conn: psycopg.Connection, fingerprint: str, *,
                          exclude: str) -> Callable[[], dict[str, Any] | None]:
    """last_root_cause, sent now and read when called (see db.later)."""
    cur = conn.execute(
        "SELECT id, root_cause FROM incidents WHERE fingerprint = %s AND id <> %s AND root_cause IS NOT NULL"
        " ORDER BY created_at DESC LIMIT 1",
        (fingerprint, exclude),
    )
    return later(cur.fetchone)


def recent_recurrences(conn: psycopg.Connection, incident: Incident, *, window_seconds: float = 3600) -> int:
    """How many earlier incidents of this fingerprint were opened within the window before this one."""
    return recent_recurrences_later(conn, incident, window_seconds=window_seconds)()


def recent_recurrences_later(conn: psycopg.Connection, incident: Incident, *,
                             window_seconds: float = 3600) -> Callable[[], int]:
    """recent_recurrences, sent now and read when called (see db.later)."""
    cur = conn.execute(
        "SELECT count(*) AS n FROM incidents WHERE fingerprint = %s AND id <> %s"
        " AND created_at <= %s AND created_at > %s - make_interval(secs => %s)",
        (incident.fingerprint, incident.id, incident.created_at, incident.created_at, window_seconds),
    )
    return later(lambda: int(cur.fetchone()["n"]))


def record_fix_attempt(conn: psycopg.Connection, fingerprint: str, runbook: str, *, success: bool) -> None:
    """Count one validated (or failed) run of a runbook on a fingerprint: rate = successes / attempts."""
    conn.execute(
        """
        INSERT INTO pattern_action_stats (fingerprint, runbook, attempts, successes, last_attempt_at, last_outcome)
        VALUES (%s, %s, 1, %s, now(), %s)
        ON CONFLICT (fingerprint, runbook) DO UPDATE SET attempts = pattern_action_stats.attempts + 1,
            successes = pattern_action_stats.successes + EXCLUDED.successes,
            last_attempt_at = now(), last_outcome = EXCLUDED.last_outcome
        """,
        (fingerprint, runbook, int(success), "success" if success else "failure"),
    )


def settle_run(conn: psycopg.Connection, incident_id: str, attempt: int, *, success: bool, counted: bool,
               hold_seconds: float, not_needed: bool = False) -> None:
    """Store a run's outcome; a counted success is watched for a recurrence for `hold_seconds` (0: not watched).
    A run that found its check already passing ran nothing: outcome 'not_needed' (no limit or back-off counts it)."""
    outcome = "not_needed" if not_needed else "success" if success else "failure"
    conn.execute(
        "UPDATE runbook_runs SET outcome = %s, finished_at = now(), counted = %s,"
        " hold_until = CASE WHEN %s AND %s > 0 THEN now() + make_interval(secs => %s) END"
        " WHERE incident_id = %s AND attempt = %s",
        (outcome, counted, success and counted, hold_seconds, hold_seconds, incident_id, attempt),
    )


LATE_LINE_TRUST_SECONDS = 60.0
"""A recurrence's own timestamp is believed when it is this close to now (a producer's clock or time zone
may be off: an untrusted stamp never spares a fix)."""


def fixes_that_did_not_hold(conn: psycopg.Connection, fingerprint: str, recurrence: str,
                            occurred_at: Any = None) -> list[dict[str, Any]]:
    """A new incident (`recurrence`) of the fingerprint came while earlier validated fixes were still watched:
    mark each such run failed after the fact and correct the learned figures. Returns the corrected runs.

    The run's outcome becomes 'recurred'; its (fingerprint, runbook) successes drop by one, and the latest
    outcome becomes a failure when the run was the latest counted one, so auto-resolution stops trusting it.
    """
    return fixes_that_did_not_hold_later(conn, fingerprint, recurrence, occurred_at)()


def fixes_that_did_not_hold_later(conn: psycopg.Connection, fingerprint: str, recurrence: str,
                                  occurred_at: Any = None) -> Callable[[], list[dict[str, Any]]]:
    """fixes_that_did_not_hold, sent now; called, it reads the runs and corrects their learned figures."""
    # A line stamped before the fix was validated, read after it (the tailer's lag, a batch), is the old
    # incident's, not a recurrence.
    # Only for an incident that exists: ingest sends this with the upsert that may open it, by the id it
    # would get (store.upsert_incident_later), before it knows whether the event opened it.
    cur = conn.execute(
        "UPDATE runbook_runs SET outcome = 'recurred', recurred_by = %(rec)s"
        " WHERE fingerprint = %(fp)s AND outcome = 'success' AND hold_until > now() AND incident_id <> %(rec)s"
        " AND EXISTS (SELECT 1 FROM incidents WHERE id = %(rec)s)"
        " AND NOT (%(at)s::timestamptz IS NOT NULL AND abs(extract(epoch FROM now() - %(at)s::timestamptz))"
        "          < %(trust)s AND %(at)s::timestamptz < finished_at)"
        " RETURNING incident_id, attempt, runbook, counted, finished_at,"
        " extract(epoch FROM now() - finished_at) AS after_seconds",
        {"rec": recurrence, "fp": fingerprint, "at": occurred_at, "trust": LATE_LINE_TRUST_SECONDS},
    )
    return later(lambda: _corrected(conn, fingerprint, cur.fetchall()))


def _corrected(conn: psycopg.Connection, fingerprint: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Correct the learned figures of runs found not to have held (their counted successes drop by one)."""
    for run in runs:
        if not run["counted"]:
            continue
        conn.execute(
            """
            UPDATE pattern_action_stats SET successes = greatest(successes - 1, 0),
                   last_outcome = CASE WHEN EXISTS (
                       SELECT 1 FROM runbook_runs WHERE fingerprint = %(fp)s AND runbook = %(rb)s AND counted
                       AND finished_at > %(at)s) THEN last_outcome ELSE 'failure' END
            WHERE fingerprint = %(fp)s AND runbook = %(rb)s
            """,
            {"fp": fingerprint, "rb": run["runbook"], "at": run["finished_at"]},
        )
    return [dict(r) for r in runs]


def record_resolution(conn: psycopg.Connection, incident: Incident, *, human: bool) -> None:
    """Count a resolved incident on its pattern, with its time to resolve (called once, when it closes)."""
    counted = resolution_counts(incident, human=human)
    conn.execute(
        """
        UPDATE error_patterns SET resolved = resolved + %(resolved)s, auto_resolved = auto_resolved + %(auto_resolved)s,
               human_resolved = human_resolved + %(human_resolved)s,
               total_resolve_seconds = total_resolve_seconds + %(total_resolve_seconds)s
        WHERE fingerprint = %(fingerprint)s
        """,
        {**counted, "fingerprint": incident.fingerprint},
    )


def resolution_counts(incident: Incident, *, human: bool) -> dict[str, Any]:
    """What record_resolution adds to the incident's error_patterns row, column by column."""
    seconds = ((incident.resolved_at - incident.created_at).total_seconds()
               if incident.resolved_at and incident.created_at else 0.0)
    return {"resolved": 1, "auto_resolved": int(incident.auto_resolved), "human_resolved": int(human),
            "total_resolve_seconds": max(seconds, 0.0)}


def pattern_after_resolution(pat: dict[str, Any] | None, incident: Incident, *, human: bool) -> dict[str, Any] | None:
    """pattern() as it reads after record_resolution counted the incident on `pat` (as read before it)."""
    if pat is None:   # no row: record_resolution changes nothing
        return None
    counted = resolution_counts(incident, human=human)
    return pattern_of({**pat, **{column: pat[column] + n for column, n in counted.items()}})


def record_escalated(conn: psycopg.Connection, fingerprint: str) -> None:
    """Count escalated incidents on the pattern: incidents escalated at least once, so re-escalating counts once.

    Read from the fingerprint's rollup row (kept by trigger with the status change), not from its incidents.
    """
    conn.execute(
        "UPDATE error_patterns SET escalated = coalesce((SELECT escalated FROM fingerprint_totals"
        " WHERE fingerprint = %s), 0) WHERE fingerprint = %s",
        (fingerprint, fingerprint),
    )
