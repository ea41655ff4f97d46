"""Failed stage tasks: which are still open (neither retried nor dismissed), one task's record, dismissal."""

from __future__ import annotations

from typing import Any

import psycopg

from erdu_tasks.store import incidents as store

OPEN = "retried_at IS NULL AND dismissed_at IS NULL"
"""The SQL condition of a failed task still waiting for a person (used by the CLI, the API and /metrics)."""

COLUMNS = ("id, task_id, task_name, stage, incident_id, error, worker, failed_at, retried_at, dismissed_at,"
           " dismissed_by, dismiss_note")


def get(conn: psycopg.Connection, failed_id: int) -> dict[str, Any] | None:
    """One failed task's whole record."""
    return conn.execute(f"SELECT {COLUMNS} FROM failed_tasks WHERE id = %s", (failed_id,)).fetchone()


def dismiss(conn: psycopg.Connection, failed_id: int, who: str, note: str | None) -> dict[str, Any] | None:
    """Dismiss an open failed task (and say so on its incident's timeline); None if it is not open."""
    row = conn.execute(
        f"UPDATE failed_tasks SET dismissed_at = now(), dismissed_by = %s, dismiss_note = %s"
        f" WHERE id = %s AND {OPEN} RETURNING {COLUMNS}", (who, note, failed_id)).fetchone()
    if row is not None and row["incident_id"]:
        store.add_timeline(conn, row["incident_id"], actor=f"person:{who}",
                           what=f"failed task #{failed_id} ({row['task_name']}) dismissed by {who}"
                                + (f": {note}" if note else ""), details={"failed_task": failed_id})
    return row
