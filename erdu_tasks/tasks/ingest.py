"""erdu.ingest: the public entry point any Celery client can call with one event or a batch."""

from __future__ import annotations

import json
from typing import Any

from erdu_tasks import names
from erdu_tasks.store import incidents as store
from erdu_tasks.app import app
from erdu_tasks.errors import InvalidEvent
from erdu_tasks.ingest import grouping
from erdu_tasks.ingest.accept import IngestResult, accept
from erdu_tasks.ingest.formats.event import parse_events
from erdu_tasks.app import runtime
from erdu_tasks.tasks.base import ErduTask, log
from erdu_tasks.tasks.publish import hand_on_ingested


def _payload_text(payload: Any) -> str:
    try:
        return json.dumps(payload, default=str)[:100_000]
    except (TypeError, ValueError):
        return repr(payload)[:100_000]


@app.task(name=names.INGEST, base=ErduTask, bind=True)
def ingest(self: ErduTask, payload: Any = None, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Turn events into incidents. Malformed input is refused whole, recorded, and the worker goes on."""
    rt = runtime()
    try:
        if args or kwargs:
            raise InvalidEvent("erdu.ingest takes exactly one argument: an event object or a list of events")
        events = parse_events(payload)
    except InvalidEvent as exc:
        error = str(exc)
        text = _payload_text(payload if not (args or kwargs) else [payload, args, kwargs])
        rejected_id = self.with_retries(lambda: _reject(rt, error, text))
        log.warning("event rejected", error=error, rejected_id=rejected_id)
        return {"rejected": error, "rejected_id": rejected_id}
    message_id = self.request.id

    result = self.with_retries(lambda: store_events(rt, events, message_id))
    if result is None:
        log.info("message already ingested", message_id=message_id)
        return {"incidents": [], "ignored": 0, "already_ingested": True}
    hand_on_ingested(result.new_incidents, result.to_reassess)
    return result.as_dict()


def store_events(rt: Any, events: list, message_id: str | None) -> IngestResult | None:
    """Take the message's receipt and accept its events in one pipelined transaction; None for a message
    already ingested. A new incident costs three round trips: the receipt with the grouping overrides,
    the upsert with what a new incident is owed, the commit."""
    with rt.db.pipelined() as conn:
        taken = store.take_receipt_later(conn, message_id) if message_id else (lambda: True)
        overrides = grouping.current(conn)   # read with the receipt: one round trip
        if not taken():
            return None   # redelivered after its acknowledgement was lost: already counted
        return accept(conn, events, rt, overrides=overrides)


def _reject(rt, error: str, text: str) -> int:
    with rt.db.transaction() as conn:
        return store.record_rejected(conn, source="celery", error=error, payload=text)
