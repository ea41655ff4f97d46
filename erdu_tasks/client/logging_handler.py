"""A logging.Handler that turns ERROR and CRITICAL records (with tracebacks) into ERDU events.

emit() only files the record in a bounded in-memory buffer; a background thread sends batches.
When ERDU is unreachable the buffer holds what it can, counts what it has to drop, and the
host program never waits and never sees an exception.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any

from erdu_tasks.client.producer import Client, ClientError

MAX_COUNT = 10_000_000
_Key = tuple[str, int, str]


class ErduHandler(logging.Handler):
    """Sends log records at `level` (ERROR by default) to ERDU in batches from a background thread.

    Identical records (same logger, level and text) waiting in the buffer are folded into one
    event with a count. At most `capacity` distinct records wait; further ones are dropped and
    counted in `dropped`. `sent` counts delivered records, `rejected` records ERDU refused.
    """

    def __init__(self, client: Client | None = None, *, url: str | None = None, token: str | None = None,
                 service: str | None = None, source: str = "python", labels: dict[str, str] | None = None,
                 level: int = logging.ERROR, capacity: int = 1000, batch_size: int = 100,
                 flush_interval: float = 2.0, max_backoff: float = 30.0, close_timeout: float = 5.0) -> None:
        super().__init__(level)
        self._client = client
        self._url, self._token = url, token
        self.service, self.source, self.labels = service, source, dict(labels or {})
        self.capacity, self.batch_size = max(1, capacity), max(1, batch_size)
        self.flush_interval, self.max_backoff, self.close_timeout = flush_interval, max_backoff, close_timeout
        self.host = socket.gethostname()
        self.sent = self.dropped = self.rejected = 0
        self.last_error: str | None = None
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._buffer_lock = threading.Lock()
        self._pending: OrderedDict[_Key, dict[str, Any]] = OrderedDict()
        self._in_flight = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the host program's side: never blocks on the network, never raises -----------------

    def emit(self, record: logging.LogRecord) -> None:
        """File the record for sending (folded with identical waiting ones); drop it if the buffer is full."""
        try:
            if os.getpid() != self._pid:  # forked: the parent's thread and buffer are not ours
                self._reset()
            if self._thread is not None and record.thread == self._thread.ident:
                return  # the sender's own logging (client libraries) must not feed back into itself
            if self._stop.is_set():
                self.dropped += 1
                return
            event = self.to_event(record)
            key = (record.name, record.levelno, event["message"])
            with self._buffer_lock:
                waiting = self._pending.get(key)
                if waiting is not None and waiting["count"] < MAX_COUNT:
                    waiting["count"] += 1
                elif len(self._pending) >= self.capacity or waiting is not None:
                    self.dropped += 1
                    return
                else:
                    self._pending[key] = event
                full = len(self._pending) >= self.batch_size
            self._ensure_thread()
            if full:
                self._wake.set()
        except Exception:
            self.handleError(record)

    def to_event(self, record: logging.LogRecord) -> dict[str, Any]:
        """The event for one record: the formatted text with its traceback, and where it came from."""
        text = self.format(record).strip() or f"empty log message from {record.name}"
        labels = {**self.labels, "logger": record.name[:1024], "level": record.levelname}
        event: dict[str, Any] = {
            "message": text, "source": self.source, "host": self.host, "count": 1,
            "labels": {str(k)[:128]: str(v)[:1024] for k, v in list(labels.items())[:64]},
            "occurred_at": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "details": {"module": record.module, "function": record.funcName, "line": record.lineno,
                        "path": record.pathname, "process": record.process, "thread": record.threadName},
        }
        if self.service:
            event["service"] = self.service
        if record.levelno >= logging.CRITICAL:
            event["severity"] = "P1"
        return event

    def flush(self) -> None:
        """Ask the sender to send now (does not wait; close() waits a bounded time)."""
        self._wake.set()

    def close(self) -> None:
        """Send what is waiting, for at most close_timeout seconds; what is left is counted as dropped."""
        try:
            thread = self._thread
            self._stop.set()
            self._wake.set()
            if thread is not None and thread.is_alive() and os.getpid() == self._pid:
                thread.join(self.close_timeout)
            with self._buffer_lock:
                self.dropped += sum(e["count"] for e in self._pending.values())
                self._pending.clear()
        finally:
            super().close()

    def stats(self) -> dict[str, Any]:
        """Counters for the program's own health output."""
        with self._buffer_lock:
            waiting = len(self._pending) + self._in_flight
        return {"sent": self.sent, "dropped": self.dropped, "rejected": self.rejected, "waiting": waiting,
                "last_error": self.last_error}

    # ---- the sender thread -------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._buffer_lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="erdu-log-sender", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        backoff = 0.0
        while True:
            stopping = self._stop.is_set()
            if backoff and not stopping:
                self._stop.wait(backoff)  # only close() cuts a back-off short
                stopping = self._stop.is_set()
            elif not stopping:
                self._wake.wait(self.flush_interval)
                self._wake.clear()
            delivered = self._send_pending()
            if stopping:
                return
            backoff = 0.0 if delivered else min(self.max_backoff, max(0.5, backoff * 2))

    def _take(self) -> list[tuple[_Key, dict[str, Any]]]:
        with self._buffer_lock:
            batch = []
            while self._pending and len(batch) < self.batch_size:
                batch.append(self._pending.popitem(last=False))
            self._in_flight = len(batch)
            return batch

    def _put_back(self, batch: list[tuple[_Key, dict[str, Any]]]) -> None:
        with self._buffer_lock:
            self._in_flight = 0
            for key, event in reversed(batch):
                newer = self._pending.get(key)
                if newer is not None:
                    newer["count"] = min(MAX_COUNT, newer["count"] + event["count"])
                    self._pending.move_to_end(key, last=False)
                elif len(self._pending) < self.capacity:
                    self._pending[key] = event
                    self._pending.move_to_end(key, last=False)
                else:
                    self.dropped += event["count"]

    def _send_pending(self) -> bool:
        """Send everything waiting; False if ERDU was unreachable (the batch is kept for later)."""
        while True:
            batch = self._take()
            if not batch:
                return True
            outcome = self._deliver([event for _, event in batch])
            if outcome is None:
                self._put_back(batch)
                return False
            if not outcome and len(batch) > 1:
                # Refused as a whole: find the bad record(s) one by one, keep the rest.
                for key, event in batch:
                    single = self._deliver([event])
                    if single is None:
                        self._put_back([(key, event)])
                        return False
                    self._count(event, single)
            else:
                for _, event in batch:
                    self._count(event, outcome)

    def _count(self, event: dict[str, Any], ok: bool) -> None:
        with self._buffer_lock:
            self._in_flight = max(0, self._in_flight - 1)
        if ok:
            self.sent += event["count"]
        else:
            self.rejected += event["count"]

    def _deliver(self, events: list[dict[str, Any]]) -> bool | None:
        """True sent, False refused for good, None unreachable (retry later)."""
        try:
            if self._client is None:
                self._client = Client(self._url, token=self._token) if self._url else Client.from_env()
            self._client.send(events if len(events) > 1 else events[0])
            self.last_error = None
            return True
        except ClientError as exc:
            self.last_error = str(exc)
            return None if exc.retryable else False
        except Exception as exc:  # anything unexpected: keep the records and try again later
            self.last_error = f"{exc.__class__.__name__}: {exc}"
            return None
