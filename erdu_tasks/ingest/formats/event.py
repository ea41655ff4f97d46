"""ERDU's own event format: one Event object or a batch of them, as JSON text or already decoded."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError

from erdu_tasks.errors import InvalidEvent
from erdu_tasks.names import OWN_DEDUP_NAMESPACES
from erdu_tasks.ingest.jsonsafe import UnsafeJSON, check_tree
from erdu_tasks.model import Event

MAX_BATCH = 10_000
EventBatch = Annotated[list[Event], Field(min_length=1, max_length=MAX_BATCH)]
_events = TypeAdapter(list[Event])


def parse_events(payload: Any) -> list[Event]:
    """One event (an object) or a batch (a list), as JSON text or already decoded; InvalidEvent if wrong."""
    if isinstance(payload, (bytes, bytearray)):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent("event body is not valid UTF-8") from None
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError as exc:
            raise InvalidEvent(f"event body is not JSON: {exc}") from None
    if isinstance(payload, dict):
        payload = [payload]
    if not isinstance(payload, list):
        raise InvalidEvent(f"expected an event object or a list of events, got {type(payload).__name__}")
    if not payload:
        raise InvalidEvent("empty batch: expected at least one event")
    if len(payload) > MAX_BATCH:
        raise InvalidEvent(f"batch of {len(payload)} events is over the limit of {MAX_BATCH}")
    try:
        check_tree(payload)
    except UnsafeJSON as exc:
        raise InvalidEvent(f"invalid event: {exc}") from None
    try:
        events = _events.validate_python(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"event {e['loc'][0]}: {'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}"
            for e in exc.errors()[:10]
        )
        raise InvalidEvent(f"invalid event: {problems}") from None
    return from_producer(events)


def from_producer(events: list[Event]) -> list[Event]:
    """Events from a producer (the API, the Celery task): a dedup_key in ERDU's own namespaces is refused."""
    for i, event in enumerate(events):
        key = (event.dedup_key or "").lower()
        taken = next((ns for ns in OWN_DEDUP_NAMESPACES if key.startswith(ns)), None)
        if taken:
            raise InvalidEvent(f"invalid event: event {i}: dedup_key: the namespace {taken!r} is ERDU's own "
                               f"(alerts, probes and monitors use it); choose a key outside "
                               f"{', '.join(OWN_DEDUP_NAMESPACES)}")
    return events
