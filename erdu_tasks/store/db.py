"""Postgres access: one lazily opened pool per process, errors translated at this boundary."""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from erdu_tasks.errors import ServiceUnreachable, TransientError

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
    def transaction(self) -> Iterator[psycopg.Connection]:
        """A connection inside one transaction, committed on success; outages become TransientError."""
        try:
            with self._get_pool().connection() as conn:
                with conn.transaction():
                    yield conn
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
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else exc.__class__.__name__
        raise ServiceUnreachable(
            f"cannot reach Postgres at {redact(url)}: {reason}. "
            "Start Postgres, or set ERDU_DATABASE_URL to a reachable database "
            "(run `erdu migrate` to create it and its tables)."
        ) from None


def redact(url: str) -> str:
    """The URL with any password replaced, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable URL>"
    if "password" in info:
        return url.replace(str(info["password"]), "***")
    return url
