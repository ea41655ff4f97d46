"""Retention: archive, then delete, closed incidents older than the retention period (`erdu prune`, beat).

One batch is one transaction: the batch's incidents are locked (SKIP LOCKED, so a prune never waits on a
stage), read whole, handed to the archive writer, and deleted with everything that hangs off them
(timeline, actions, deliveries: ON DELETE CASCADE). The writer must have the records safely on disk before
the transaction commits; if it raises, the transaction rolls back and nothing is deleted.

Never pruned: an incident that is not closed, whatever its age. Kept whole: the learned patterns and
their figures (their own tables) and the rollups (the delete triggers skip a prune, see 0090_retention.sql).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

# The tables holding an incident's story, archived with it (each has incident_id).
_CHILD_TABLES = ("incident_timeline", "action_runs", "runbook_runs", "stage_runs", "escalation_steps",
                 "deliveries", "incident_holds")

Archiver = Callable[[list[dict[str, Any]]], None]


@dataclass
class PruneResult:
    """What one prune removed (or, dry, would remove)."""

    cutoff: datetime | None
    incidents: int = 0
    timeline: int = 0
    receipts: int = 0
    rejected: int = 0
    archives: list[str] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"cutoff": self.cutoff.isoformat() if self.cutoff else None, "incidents": self.incidents,
                "timeline": self.timeline, "receipts": self.receipts, "rejected": self.rejected,
                "archives": self.archives, "dry_run": self.dry_run}


def candidates_sql() -> str:
    """The oldest closed incidents past the cutoff, locked for this transaction (index incidents_closed_at)."""
    return ("SELECT id FROM incidents WHERE status = 'closed' AND closed_at < %s"
            " ORDER BY closed_at, id LIMIT %s FOR UPDATE SKIP LOCKED")


def count_due(conn: psycopg.Connection, cutoff: datetime) -> tuple[int, int]:
    """How many incidents (and their timeline rows) a prune at this cutoff would remove."""
    row = conn.execute(
        "SELECT count(*) AS n, coalesce(sum((SELECT count(*) FROM incident_timeline t WHERE t.incident_id = i.id)), 0)"
        " AS t FROM incidents i WHERE status = 'closed' AND closed_at < %s", (cutoff,)).fetchone()
    return int(row["n"]), int(row["t"])


def _records(conn: psycopg.Connection, ids: list[str], read_report: Callable[[dict], str | None]) -> list[dict]:
    rows = conn.execute("SELECT to_jsonb(i) AS row FROM incidents i WHERE id = ANY(%s) ORDER BY closed_at, id",
                        (ids,)).fetchall()
    records = {r["row"]["id"]: {"incident": r["row"]} for r in rows}
    for table in _CHILD_TABLES:
        for r in conn.execute(f"SELECT incident_id, to_jsonb(c) AS row FROM {table} c WHERE incident_id = ANY(%s)",
                              (ids,)).fetchall():
            records[r["incident_id"]].setdefault(table, []).append(r["row"])
    for record in records.values():
        record["report_markdown"] = read_report(record["incident"])
    return list(records.values())


def prune_batch(conn: psycopg.Connection, cutoff: datetime, *, batch: int, archive: Archiver | None,
                read_report: Callable[[dict], str | None] = lambda _row: None) -> tuple[int, int]:
    """Archive and delete one batch of due incidents inside the caller's transaction; (incidents, timeline)."""
    ids = [r["id"] for r in conn.execute(candidates_sql(), (cutoff, batch)).fetchall()]
    if not ids:
        return 0, 0
    if archive is not None:
        archive(_records(conn, ids, read_report))
    conn.execute("SET LOCAL erdu.pruning = 'on'")
    timeline = conn.execute("SELECT count(*) AS n FROM incident_timeline WHERE incident_id = ANY(%s)",
                            (ids,)).fetchone()["n"]
    deleted = conn.execute("DELETE FROM incidents WHERE id = ANY(%s)", (ids,)).rowcount
    return deleted, int(timeline)


def prune_small_tables(conn: psycopg.Connection, *, older_than_seconds: float, limit: int = 5000) -> tuple[int, int]:
    """Forget ingest receipts and rejected events older than the receipts' period; (receipts, rejected)."""
    receipts = conn.execute(
        "DELETE FROM ingest_receipts WHERE message_id IN (SELECT message_id FROM ingest_receipts"
        " WHERE received_at < now() - make_interval(secs => %s) LIMIT %s)", (older_than_seconds, limit)).rowcount
    rejected = conn.execute(
        "DELETE FROM rejected_events WHERE id IN (SELECT id FROM rejected_events"
        " WHERE received_at < now() - make_interval(secs => %s) LIMIT %s)", (older_than_seconds, limit)).rowcount
    return receipts, rejected


def record_run(conn: psycopg.Connection, result: PruneResult, by: str) -> None:
    conn.execute("INSERT INTO prune_runs (by, cutoff, incidents, timeline, receipts, rejected, archive)"
                 " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                 (by, result.cutoff, result.incidents, result.timeline, result.receipts, result.rejected,
                  ", ".join(result.archives) or None))


class ArchiveFile:
    """A gzip'd JSON-lines file of pruned incidents, one per prune run, fsynced before each batch commits."""

    def __init__(self, directory: Path, now: datetime | None = None) -> None:
        stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%S%fZ")
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"incidents-{stamp}.jsonl.gz"
        self.written = 0

    def __call__(self, records: Iterable[dict[str, Any]]) -> None:
        with gzip.open(self.path, "at", encoding="utf-8") as out:   # one gzip member per batch
            for record in records:
                out.write(json.dumps(record, default=str, ensure_ascii=False) + "\n")
                self.written += 1
        with open(self.path, "rb") as f:
            os.fsync(f.fileno())


def read_archive(path: Path) -> list[dict[str, Any]]:
    """Every record of an archive file (tests, and anyone restoring an incident by hand)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
