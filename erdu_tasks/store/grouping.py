"""Grouping overrides in Postgres: merges and splits people made, and the version that says they changed."""

from __future__ import annotations

from typing import Any

import psycopg

from erdu_tasks.store.incidents import OPEN_SQL


def _state_row(conn: psycopg.Connection) -> None:
    """The one row of grouping_state, made again if someone emptied the table (a TRUNCATE of everything)."""
    conn.execute("INSERT INTO grouping_state (only_row, version) VALUES (true, 0) ON CONFLICT DO NOTHING")


def version(conn: psycopg.Connection) -> tuple[str, int]:
    """(database name, override version): a cache of the overrides is good while both are unchanged."""
    row = conn.execute("SELECT current_database() AS db, version FROM grouping_state").fetchone()
    if row is None:
        _state_row(conn)
        return conn.execute("SELECT current_database() AS db").fetchone()["db"], 0
    return row["db"], int(row["version"])


def load(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every override, oldest first."""
    return conn.execute("SELECT * FROM grouping_overrides ORDER BY id").fetchall()


def lock(conn: psycopg.Connection) -> None:
    """Serialise changes to the overrides (two merges at once could otherwise make a cycle)."""
    _state_row(conn)
    conn.execute("SELECT version FROM grouping_state FOR UPDATE")


def bump(conn: psycopg.Connection) -> None:
    """Tell every ingest process that the overrides changed (it reloads them on its next batch)."""
    _state_row(conn)
    conn.execute("UPDATE grouping_state SET version = version + 1")


def add_merge(conn: psycopg.Connection, fingerprint: str, target: str, by: str, note: str | None) -> int:
    """Record "fingerprint is target"; merges that led to fingerprint now lead to target (chains stay one hop)."""
    conn.execute("UPDATE grouping_overrides SET target = %s WHERE kind = 'merge' AND target = %s",
                 (target, fingerprint))
    row = conn.execute(
        "INSERT INTO grouping_overrides (kind, fingerprint, target, created_by, note) VALUES ('merge', %s, %s, %s, %s)"
        " RETURNING id", (fingerprint, target, by, note)).fetchone()
    assert row is not None
    return int(row["id"])


def add_split(conn: psycopg.Connection, fingerprint: str, slot: int, by: str, note: str | None) -> int | None:
    """Record "the value of this slot of fingerprint matters"; None if it was already recorded."""
    row = conn.execute(
        "INSERT INTO grouping_overrides (kind, fingerprint, slot, created_by, note) VALUES ('split', %s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING RETURNING id", (fingerprint, slot, by, note)).fetchone()
    return int(row["id"]) if row else None


def remove(conn: psycopg.Connection, override_id: int) -> dict[str, Any] | None:
    """Delete one override; the row it was, or None."""
    return conn.execute("DELETE FROM grouping_overrides WHERE id = %s RETURNING *", (override_id,)).fetchone()


def merge_learning(conn: psycopg.Connection, source: str, target: str) -> None:
    """The learned statistics of `source` are added to `target`'s: pattern counts and per-runbook fix records."""
    conn.execute(
        """
        INSERT INTO error_patterns AS p (fingerprint, template, title, occurrences, incidents, resolved, escalated,
                                         auto_resolved, human_resolved, total_resolve_seconds, first_seen, last_seen)
        SELECT %(target)s, template, title, occurrences, incidents, resolved, escalated, auto_resolved,
               human_resolved, total_resolve_seconds, first_seen, last_seen
        FROM error_patterns WHERE fingerprint = %(source)s
        ON CONFLICT (fingerprint) DO UPDATE SET
            occurrences = p.occurrences + EXCLUDED.occurrences, incidents = p.incidents + EXCLUDED.incidents,
            resolved = p.resolved + EXCLUDED.resolved, escalated = p.escalated + EXCLUDED.escalated,
            auto_resolved = p.auto_resolved + EXCLUDED.auto_resolved,
            human_resolved = p.human_resolved + EXCLUDED.human_resolved,
            total_resolve_seconds = p.total_resolve_seconds + EXCLUDED.total_resolve_seconds,
            first_seen = least(p.first_seen, EXCLUDED.first_seen), last_seen = greatest(p.last_seen, EXCLUDED.last_seen)
        """, {"source": source, "target": target})
    conn.execute("DELETE FROM error_patterns WHERE fingerprint = %s", (source,))
    conn.execute(
        """
        INSERT INTO pattern_action_stats AS s (fingerprint, runbook, attempts, successes, last_attempt_at, last_outcome)
        SELECT %(target)s, runbook, attempts, successes, last_attempt_at, last_outcome
        FROM pattern_action_stats WHERE fingerprint = %(source)s
        ON CONFLICT (fingerprint, runbook) DO UPDATE SET
            attempts = s.attempts + EXCLUDED.attempts, successes = s.successes + EXCLUDED.successes,
            last_outcome = CASE WHEN EXCLUDED.last_attempt_at > s.last_attempt_at OR s.last_attempt_at IS NULL
                                THEN EXCLUDED.last_outcome ELSE s.last_outcome END,
            last_attempt_at = greatest(s.last_attempt_at, EXCLUDED.last_attempt_at)
        """, {"source": source, "target": target})
    conn.execute("DELETE FROM pattern_action_stats WHERE fingerprint = %s", (source,))


def open_incident(conn: psycopg.Connection, fingerprint: str) -> str | None:
    """The id of the fingerprint's open incident, if any."""
    row = conn.execute(f"SELECT id FROM incidents WHERE fingerprint = %s AND {OPEN_SQL}",
                       (fingerprint,)).fetchone()
    return row["id"] if row else None


def open_incidents(conn: psycopg.Connection, fingerprints: list[str]) -> dict[str, str]:
    """fingerprint -> id of its open incident, for those that have one."""
    if not fingerprints:
        return {}
    rows = conn.execute("SELECT fingerprint, id FROM incidents WHERE fingerprint = ANY(%s)"
                        f" AND {OPEN_SQL}", (fingerprints,)).fetchall()
    return {r["fingerprint"]: r["id"] for r in rows}


def rekey_incident(conn: psycopg.Connection, incident_id: str, fingerprint: str) -> bool:
    """Give an open incident another fingerprint (a merge whose target had no open incident).

    False if the target got an open incident of its own meanwhile (an event raced the merge).
    """
    try:
        with conn.transaction():   # a savepoint: a lost race leaves the caller's transaction usable
            conn.execute("UPDATE incidents SET fingerprint = %s WHERE id = %s", (fingerprint, incident_id))
    except psycopg.errors.UniqueViolation:
        return False
    return True
