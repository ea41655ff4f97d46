"""The reconciler's query: which incidents are owed a stage that nobody is running (Postgres decides)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from erdu_tasks.errors import ErduError
from erdu_tasks.store.db import Database
from erdu_tasks.model import Status
from erdu_tasks.names import OWED, Stage, owed_stage


@dataclass(frozen=True)
class Owed:
    """An incident stuck in a stage past its deadline."""

    incident_id: str
    status: Status
    stage: Stage


BACKOFF_DOUBLINGS = 4
"""A stage re-driven n times waits deadline × 2^n before the next re-drive, up to deadline × 16."""


def stuck(conn: psycopg.Connection, *, deadline_seconds: float, limit: int = 500) -> list[Owed]:
    """Claim incidents whose owed stage has not moved for its deadline (marks them driven now).

    The deadline doubles with each re-drive of the same stage (the count is reset by the next status
    change): work that is only queued behind a backlog is re-driven once, not once per pass, so the
    copies never deepen the backlog they are waiting in.
    """
    rows = conn.execute(
        """
        UPDATE incidents SET driven_at = now(), redrives = redrives + 1
        WHERE id IN (
            SELECT id FROM incidents
            WHERE status = ANY(%(statuses)s)
              AND greatest(status_changed_at, coalesce(driven_at, status_changed_at))
                  < now() - make_interval(secs => %(deadline)s * power(2, least(redrives, %(doublings)s)))
            ORDER BY status_changed_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
        RETURNING id, status, auto_resolved
        """,
        {"statuses": [s.value for s in OWED], "deadline": deadline_seconds, "limit": limit,
         "doublings": BACKOFF_DOUBLINGS},
    ).fetchall()
    out = []
    for r in rows:
        status = Status(r["status"])
        stage = owed_stage(status, auto_resolved=bool(r["auto_resolved"]))
        if stage is not None:
            out.append(Owed(r["id"], status, stage))
    return out


LEASE_SECONDS = 6.0
"""How far ahead a running stage's lease reaches. Its worker renews it every third of that while the stage
acts (kept()), so the incident is owed again LEASE_SECONDS + the stage deadline after its worker's last
renewal: a long action is never re-driven while its worker lives and reaches Postgres, and the work of a
dead or cut-off host is re-driven within half a minute, whatever the runbook's time budget."""


def lease(conn: psycopg.Connection, incident_id: str, seconds: float) -> None:
    """A live worker owns the incident's stage for `seconds`: the reconciler waits that long plus its deadline.

    `seconds=0` hands the incident back to the deadline (the stage settled).
    """
    conn.execute("UPDATE incidents SET driven_at = now() + make_interval(secs => %s) WHERE id = %s",
                 (float(seconds), incident_id))


@contextmanager
def kept(db: Database, incident_id: str, *, seconds: float = LEASE_SECONDS) -> Iterator[None]:
    """Renew the incident's lease every third of `seconds` while the block runs (from a thread of its own).

    A renewal that fails (Postgres away) is skipped: the lease may then lapse and the stage be re-driven,
    which every stage survives (compare-and-set, claimed action keys); the block itself is never disturbed.
    """
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(seconds / 3):
            try:
                with db.transaction() as conn:
                    lease(conn, incident_id, seconds)
            except (ErduError, psycopg.Error):
                continue

    thread = threading.Thread(target=renew, name=f"lease-{incident_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def approvals_overdue(conn: psycopg.Connection, *, deadline_seconds: float) -> list[str]:
    """Incidents waiting for approval longer than the deadline."""
    rows = conn.execute(
        "SELECT id FROM incidents WHERE status = 'awaiting_approval'"
        " AND status_changed_at < now() - make_interval(secs => %s)",
        (deadline_seconds,),
    ).fetchall()
    return [r["id"] for r in rows]
