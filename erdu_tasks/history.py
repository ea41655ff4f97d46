"""What Postgres remembers: related incidents, pattern history, per-runbook success, learning updates."""

from __future__ import annotations

from typing import Any

import psycopg

from .model import Incident


def related_incidents(conn: psycopg.Connection, incident: Incident, *, limit: int = 5,
                      min_score: float = 0.3) -> list[dict[str, Any]]:
    """Earlier incidents ranked by trigram similarity of template and title (pg_trgm)."""
    rows = conn.execute(
        """
        SELECT id, title, status, root_cause,
               greatest(similarity(template, %(template)s), similarity(title, %(title)s)) AS score
        FROM incidents
        WHERE id <> %(id)s AND created_at <= %(created)s
          AND (template %% %(template)s OR title %% %(title)s OR fingerprint = %(fp)s)
        ORDER BY (fingerprint = %(fp)s) DESC, score DESC, created_at DESC
        LIMIT %(limit)s
        """,
        {"id": incident.id, "template": incident.template or incident.title, "title": incident.title,
         "fp": incident.fingerprint, "created": incident.created_at, "limit": limit},
    ).fetchall()
    return [dict(r, score=round(float(r["score"]), 3)) for r in rows if float(r["score"]) >= min_score
            or r["id"] and r["title"] == incident.title]


def pattern(conn: psycopg.Connection, fingerprint: str) -> dict[str, Any] | None:
    """The learned counters of one fingerprint."""
    return conn.execute("SELECT * FROM error_patterns WHERE fingerprint = %s", (fingerprint,)).fetchone()


def runbook_stats(conn: psycopg.Connection, fingerprint: str) -> dict[str, tuple[int, int]]:
    """runbook -> (attempts, successes) for a fingerprint."""
    rows = conn.execute(
        "SELECT runbook, attempts, successes FROM pattern_action_stats WHERE fingerprint = %s", (fingerprint,)
    ).fetchall()
    return {r["runbook"]: (int(r["attempts"]), int(r["successes"])) for r in rows}


def recent_recurrences(conn: psycopg.Connection, fingerprint: str, *, window_seconds: float = 3600) -> int:
    """How many incidents of this fingerprint were opened within the window (flapping)."""
    row = conn.execute(
        "SELECT count(*) AS n FROM incidents WHERE fingerprint = %s"
        " AND created_at > now() - make_interval(secs => %s)",
        (fingerprint, window_seconds),
    ).fetchone()
    return max(0, int(row["n"]) - 1)


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


def record_resolution(conn: psycopg.Connection, incident: Incident, *, human: bool) -> None:
    """Count a resolved incident on its pattern, with its time to resolve."""
    seconds = ((incident.resolved_at - incident.created_at).total_seconds()
               if incident.resolved_at and incident.created_at else 0.0)
    conn.execute(
        """
        UPDATE error_patterns SET resolved = resolved + 1, auto_resolved = auto_resolved + %s,
               human_resolved = human_resolved + %s, total_resolve_seconds = total_resolve_seconds + %s
        WHERE fingerprint = %s
        """,
        (int(incident.auto_resolved), int(human), seconds, incident.fingerprint),
    )


def record_escalated(conn: psycopg.Connection, fingerprint: str) -> None:
    """Count an escalation on the pattern."""
    conn.execute("UPDATE error_patterns SET escalated = escalated + 1 WHERE fingerprint = %s", (fingerprint,))
