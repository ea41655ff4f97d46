"""Live updates: a server-sent event stream that says "the incidents changed" so open lists refresh.

One poller per API process reads the newest timeline line's id (the primary key's end: an index probe)
once a second while anyone listens, and wakes every stream when it moves. Every new incident and every
status change writes a timeline line; a repeated occurrence alone does not (its count shows on the next
change or reload). Each stream ends after STREAM_SECONDS and the browser reconnects by itself, so a
stopping API never waits long on open streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from erdu_tasks.api.console.web import console_of, signed_in

router = APIRouter(include_in_schema=False)

POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0
STREAM_SECONDS = 300.0


def version(conn: Any) -> int:
    """The id of the newest timeline line: it moves whenever an incident is opened or changes."""
    row = conn.execute("SELECT coalesce(max(id), 0) AS v FROM incident_timeline").fetchone()
    return int(row["v"])


class Pulse:
    """Polls the version while streams listen; streams wait for it to move."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.current: int | None = None
        self.listeners = 0
        self._moved: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def _read(self) -> int:
        with self.db.transaction() as conn:
            return version(conn)

    async def _poll(self) -> None:
        try:
            while self.listeners > 0:
                try:
                    now = await asyncio.to_thread(self._read)
                except Exception:   # Postgres away for a moment: the streams stay open, the poll goes on
                    now = self.current
                if now != self.current:
                    self.current = now
                    moved, self._moved = self._moved, asyncio.Event()
                    if moved is not None:
                        moved.set()
                await asyncio.sleep(POLL_SECONDS)
        finally:
            self._task = None

    async def subscribe(self) -> int:
        """Start listening; the version now."""
        self.listeners += 1
        if self._moved is None:
            self._moved = asyncio.Event()
        if self.current is None:
            self.current = await asyncio.to_thread(self._read)
        if self._task is None:
            self._task = asyncio.create_task(self._poll())
        return self.current

    def unsubscribe(self) -> None:
        """Stop listening (the poller stops with the last listener)."""
        self.listeners -= 1

    async def wait(self, seen: int, timeout: float) -> int | None:
        """The version once it differs from `seen`, or None after timeout."""
        if self.current is not None and self.current != seen:
            return self.current
        assert self._moved is not None
        moved = self._moved
        try:
            await asyncio.wait_for(moved.wait(), timeout)
        except asyncio.TimeoutError:
            return None
        return self.current


@router.get("/events/incidents")
async def incident_events(request: Request) -> StreamingResponse:
    """text/event-stream: `hello` with the current version, then `changed` each time it moves."""
    signed_in(request)
    cons = console_of(request)
    pulse: Pulse = cons.pulse

    async def stream() -> AsyncIterator[str]:
        seen = await pulse.subscribe()
        loop = asyncio.get_running_loop()
        ends = loop.time() + STREAM_SECONDS
        try:
            yield f"retry: 2000\nevent: hello\ndata: {seen}\n\n"
            while loop.time() < ends:
                if await request.is_disconnected():
                    break
                moved = await pulse.wait(seen, min(KEEPALIVE_SECONDS, max(0.1, ends - loop.time())))
                if moved is None:
                    yield ": keep-alive\n\n"
                else:
                    seen = moved
                    yield f"event: changed\ndata: {seen}\n\n"
        finally:
            pulse.unsubscribe()

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
