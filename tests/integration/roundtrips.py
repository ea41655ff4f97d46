"""Count what a block of code sends Postgres: round trips, statements and transactions, from libpq's own trace.

Every connection a `Database` hands out inside `counting(db)` is traced (libpq `PQtrace`); the trace is read
afterwards. A round trip is a wait for the server: messages sent (F) followed by messages received (B). A
statement is a Query or Parse message; a transaction is a BEGIN. The pool's connection check (skipped for a
connection returned moments ago, as in a busy worker) is outside the count.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from psycopg import pq

from erdu_tasks.store.db import Database


@dataclass
class Count:
    """What was sent: round trips, statements (BEGIN and COMMIT included) and transactions."""

    round_trips: int = 0
    statements: int = 0
    transactions: int = 0
    sql: list[str] = field(default_factory=list)

    def add_trace(self, text: str) -> None:
        """Add one connection's libpq trace (a message per line; a statement's text may span lines)."""
        messages: list[list[str]] = []
        for line in text.splitlines():
            if line[:2] in ("F\t", "B\t"):
                messages.append(line.split("\t", 3))
            elif messages:
                messages[-1][-1] += " " + line
        prepared: dict[str, str] = {}
        unnamed = ""
        previous = None
        for direction, _, message, *rest in messages:
            if direction == "B" and previous == "F":
                self.round_trips += 1
            previous = direction
            if direction != "F":
                continue
            args = rest[0] if rest else ""
            if message == "Query":
                self._statement(args.strip()[1:].rsplit('"', 1)[0])
            elif message == "Parse":
                name, _, query = args.strip()[1:].partition('" "')
                prepared[name] = query.rsplit('"', 1)[0]
                if not name:
                    unnamed = prepared[name]
            elif message == "Bind":
                name = args.strip().split(" ", 1)[1].strip()[1:].split('"', 1)[0]
                self._statement(prepared.get(name, unnamed) if name else unnamed)

    def _statement(self, sql: str) -> None:
        sql = " ".join(sql.split())
        self.statements += 1
        self.transactions += sql.upper().startswith("BEGIN")
        self.sql.append(sql[:150])

    def __str__(self) -> str:
        return f"{self.round_trips} round trips, {self.statements} statements, {self.transactions} transactions"


@contextmanager
def counting(db: Database) -> Iterator[Count]:
    """Trace every connection `db` hands out in the block (transaction and pipelined alike); yield the Count,
    filled in when the block ends."""
    count = Count()
    traces: list[tuple[object, object]] = []
    original = db.borrowed

    @contextmanager
    def traced() -> Iterator[object]:
        with original() as conn:
            trace = tempfile.TemporaryFile()
            conn.pgconn.trace(os.dup(trace.fileno()))
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            try:
                yield conn
            finally:
                conn.pgconn.untrace()
                traces.append((conn, trace))

    db.borrowed = traced
    try:
        yield count
    finally:
        db.borrowed = original
        for _, trace in traces:
            trace.seek(0)
            count.add_trace(trace.read().decode("utf-8", "replace"))
            trace.close()
