"""What changed since a cursor: the timeline rows (every status change, note and new incident) in id order.

`erdu incidents watch` follows this stream. A timeline id is taken when a row is inserted, not when its
transaction commits, so a row with a lower id can become visible after a higher one was read: each poll reads
again from LOOKBACK ids below the cursor and skips the rows already seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

LOOKBACK = 500
"""How many ids below the cursor a poll reads again (rows whose transaction committed late)."""


@dataclass(frozen=True)
class Change:
    """One timeline row with the incident's current severity, status, service and title."""

    id: int
    at: datetime
    incident_id: str
    actor: str
    from_status: str | None
    to_status: str | None
    what: str
    severity: str
    status: str
    service: str | None
    title: str

    @property
    def is_new(self) -> bool:
        """True for the row ingest writes when it opens the incident."""
        return self.actor == "ingest" and self.what.startswith("detected")


@dataclass
class Follower:
    """Reads the changes after a cursor, each once."""

    after: int = 0
    _seen: set[int] = field(default_factory=set)

    @classmethod
    def from_now(cls, conn: psycopg.Connection) -> Follower:
        """A follower that reports only what happens from now on."""
        row = conn.execute("SELECT coalesce(max(id), 0) AS id FROM incident_timeline").fetchone()
        after = int(row["id"])
        seen = {r["id"] for r in conn.execute("SELECT id FROM incident_timeline WHERE id > %s",
                                              (max(after - LOOKBACK, 0),)).fetchall()}
        return cls(after=after, _seen=seen)

    def poll(self, conn: psycopg.Connection, limit: int = 500) -> list[Change]:
        """The changes not yet reported, oldest first."""
        rows: list[dict[str, Any]] = conn.execute(
            """
            SELECT t.id, t.at, t.incident_id, t.actor, t.from_status, t.to_status, t.what,
                   i.severity, i.status, i.service, i.title
            FROM incident_timeline t JOIN incidents i ON i.id = t.incident_id
            WHERE t.id > %s ORDER BY t.id LIMIT %s
            """, (max(self.after - LOOKBACK, 0), limit + len(self._seen))).fetchall()
        out = [Change(**r) for r in rows if r["id"] not in self._seen][:limit]
        for c in out:
            self._seen.add(c.id)
        if out:
            self.after = max(self.after, max(c.id for c in out))
        floor = self.after - LOOKBACK
        self._seen = {i for i in self._seen if i > floor}
        return out
