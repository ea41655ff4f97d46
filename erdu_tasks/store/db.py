"""Postgres access: one lazily opened pool per process, errors translated at this boundary."""

from __future__ import annotations

import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import psycopg
import structlog
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from erdu_tasks.errors import ServiceUnreachable, TransientError

T = TypeVar("T")
log = structlog.get_logger("erdu.db")


def later(read: Callable[[], T]) -> Callable[[], T]:
    """The reader of a statement already sent (queued, on a pipelined connection): it waits for the result
    on its first call only. Queue several, then read them: on a pipelined connection they cost one round
    trip together; on an ordinary one each was answered when it was sent."""
    kept: list[T] = []

    def value() -> T:
        if not kept:
            kept.append(read())
        return kept[0]

    return value


@dataclass(frozen=True)
class Clock:
    """The server's time as one read in a transaction: its now() (the transaction's start, what a now() in
    any of its statements stamps) and its clock_timestamp() then, carried on by this process's monotonic clock.

    For a row whose time is decided before the statement that writes it is sent (it goes with the commit,
    and what the row says was needed before): `at()` is the server's clock about now, a little behind what
    clock_timestamp() would stamp (the time the answer took to arrive is not added), so a line stamped with
    it still sorts before any line written after this transaction."""

    now: datetime
    read: datetime
    read_monotonic: float

    def at(self) -> datetime:
        """The server's clock_timestamp() as of now, from the one read."""
        return self.read + timedelta(seconds=time.monotonic() - self.read_monotonic)


def clock_later(conn: psycopg.Connection) -> Callable[[], Clock]:
    """The transaction's Clock, sent now and read when called (see later)."""
    cur = conn.execute("SELECT now() AS now, clock_timestamp() AS read")

    def clock() -> Clock:
        row = cur.fetchone()
        assert row is not None
        return Clock(row["now"], row["read"], time.monotonic())

    return later(clock)


_SETTLED: weakref.WeakKeyDictionary[psycopg.Connection, list[Callable[[bool], None]]] = weakref.WeakKeyDictionary()


def when_settled(conn: psycopg.Connection, settle: Callable[[bool], None]) -> None:
    """Call `settle(True)` once the transaction on conn has committed, `settle(False)` if it does not commit.

    For work outside the database that must stand or fall with the transaction (a file written before the
    commit). Only the transactions of Database.transaction and Database.pipelined call it. A failed
    transaction calls it before its ROLLBACK where it can, while its row locks still keep the next worker
    from redoing the work; a commit that failed on the server has no locks left by then.
    """
    _SETTLED.setdefault(conn, []).append(settle)


def _settle(conn: psycopg.Connection, committed: bool) -> None:
    """Run what when_settled registered for the transaction just ended (each once); its errors are logged."""
    for settle in _SETTLED.pop(conn, []):
        try:
            settle(committed)
        except Exception as exc:   # the transaction's outcome stands; what settles after it cannot change it
            log.error("settling after the transaction failed", committed=committed,
                      error=f"{exc.__class__.__name__}: {exc}")


_TRANSIENT = (psycopg.OperationalError, psycopg.errors.SerializationFailure,
              psycopg.errors.DeadlockDetected, PoolTimeout)


class _RecentlyUsed:
    """The pool's connection check, skipped for a connection that came back healthy moments ago.

    Checking costs a round trip on every borrow; a connection returned idle a few seconds ago is as
    good as checked. One that sat longer (or whose server restarted meanwhile) is still checked, and
    one that breaks mid-use fails its transaction, which is retried as a TransientError.
    """

    def __init__(self, fresh_seconds: float = 5.0) -> None:
        self.fresh_seconds = fresh_seconds
        self._returned: weakref.WeakKeyDictionary[psycopg.Connection, float] = weakref.WeakKeyDictionary()

    def check(self, conn: psycopg.Connection) -> None:
        returned = self._returned.get(conn)
        if returned is None or time.monotonic() - returned > self.fresh_seconds:
            ConnectionPool.check_connection(conn)

    def returned(self, conn: psycopg.Connection) -> None:
        if conn.autocommit:   # a pipelined transaction that ended without a clean commit (Database.pipelined)
            conn.autocommit = False
        self._returned[conn] = time.monotonic()


class Database:
    """A connection pool that survives fork (Celery prefork) and reconnects after an outage."""

    def __init__(self, url: str, *, max_size: int = 4, timeout: float = 10.0, prepare: bool = True) -> None:
        self.url = url
        # Behind PgBouncer in transaction mode a session's prepared statements do not survive the
        # transaction (PgBouncer before 1.21): prepare=False makes psycopg never prepare one.
        self._prepare = prepare
        self._max_size = max_size
        self._timeout = timeout
        self._pool: ConnectionPool | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def _get_pool(self) -> ConnectionPool:
        if self._pool is None or self._pid != os.getpid():
            with self._lock:
                if self._pool is None or self._pid != os.getpid():
                    recent = _RecentlyUsed()
                    self._pool = ConnectionPool(
                        self.url, min_size=1, max_size=self._max_size, open=False,
                        kwargs={"row_factory": dict_row, "autocommit": False,
                                **({} if self._prepare else {"prepare_threshold": None})},
                        check=recent.check, reset=recent.returned, timeout=self._timeout,
                        reconnect_timeout=0, name="erdu",
                    )
                    self._pool.open(wait=False)
                    self._pid = os.getpid()
        return self._pool

    @contextmanager
    def borrowed(self) -> Iterator[psycopg.Connection]:
        """A connection of the pool, returned at the end of the block (transaction() and pipelined() use it)."""
        with self._get_pool().connection() as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """A connection inside one transaction, committed on success; outages become TransientError."""
        try:
            with self.borrowed() as conn:
                _SETTLED.pop(conn, None)
                try:
                    with conn.transaction():
                        try:
                            yield conn
                        except BaseException:
                            _settle(conn, False)   # before the rollback, its locks still held
                            raise
                except BaseException:
                    _settle(conn, False)   # the commit failed (nothing left to run if the block did)
                    raise
                _settle(conn, True)
        except _TRANSIENT as exc:
            raise TransientError(f"database unavailable: {exc.__class__.__name__}: {exc}".strip()) from exc

    @contextmanager
    def pipelined(self) -> Iterator[psycopg.Connection]:
        """One transaction in pipeline mode: a statement whose result is not read goes to the server with
        the next one that is, and the last writes go with the COMMIT, so the transaction costs one round
        trip per point where the code waits for a result, plus one for the commit.

        The BEGIN is queued as a statement of its own (a psycopg transaction block in pipeline mode costs a
        sync on entry and on exit). A failing statement fails the rest of the block, nothing is committed,
        and the error surfaces at the next read or at the end of the block. Nested transaction blocks
        (savepoints) are not for this connection.
        """
        try:
            with self.borrowed() as conn:
                conn.autocommit = True
                _SETTLED.pop(conn, None)
                try:
                    with conn.pipeline():
                        conn.execute("BEGIN")
                        yield conn
                        conn.execute("COMMIT")
                except BaseException:
                    _settle(conn, False)   # before the rollback: a failed statement leaves the locks held till then
                    if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
                        conn.execute("ROLLBACK")
                    raise
                conn.autocommit = False   # else the pool's reset puts it back
                _settle(conn, True)   # every answer, the commit's too, has arrived: reading them costs nothing
        except _TRANSIENT as exc:
            raise TransientError(f"database unavailable: {exc.__class__.__name__}: {exc}".strip()) from exc

    def close(self) -> None:
        """Close the pool (tests and shutdown)."""
        if self._pool is not None and self._pid == os.getpid():
            self._pool.close()
        self._pool = None


def connect_once(url: str, *, timeout: float = 5.0) -> psycopg.Connection:
    """A single autocommit connection, or ServiceUnreachable saying which URL failed and how to fix it."""
    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=int(max(1, timeout)), row_factory=dict_row)
    except psycopg.OperationalError as exc:
        reason = failure_reason(exc)
        raise ServiceUnreachable(
            f"cannot reach Postgres at {redact(url)}: {reason}. "
            "Start Postgres, or set ERDU_DATABASE_URL to a reachable database "
            "(run `erdu migrate` to create it and its tables)."
        ) from None


_ATTEMPT = re.compile(r"^- host: '([^']*)', port: '([^']*)'.* failed: (.*)$")


def failure_reason(exc: BaseException) -> str:
    """Why a connection failed, in one line: with several hosts (a multi-host URL), each host's own reason."""
    text = str(exc).strip()
    if not text:
        return exc.__class__.__name__
    _, marker, attempts = text.partition("All failures were:")
    if marker:
        found = [_ATTEMPT.match(line) for line in attempts.splitlines()]
        reasons = [f"{m[1]}:{m[2]}: {' '.join(m[3].split())}" for m in found if m]
        if reasons:
            return "; ".join(reasons)
    return text.splitlines()[-1]


def redact(url: str) -> str:
    """The URL with any password replaced, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable URL>"
    if "password" in info:
        return url.replace(str(info["password"]), "***")
    return url
