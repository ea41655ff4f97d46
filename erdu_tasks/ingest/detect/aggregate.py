"""Fold a batch of events by fingerprint before enqueueing: one event per group, with a count.

Producers (the log tailer, the API) call ``fold`` on what they collected, so a storm of a
hundred thousand copies of one error becomes one ingest message carrying count=100000 and
a few samples. Grouping is the same as ingest's: ``dedup_key`` when the event has one, else
``fingerprint(message, service).key``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from erdu_tasks.model import Event
from erdu_tasks.ingest.detect.fingerprint import fingerprint

MAX_SAMPLES = 5
MAX_SAMPLE_CHARS = 2000
MAX_COUNT = 10_000_000
"""Event.count's upper bound: a bigger group is sent as several events, so nothing is lost."""


@dataclass
class _Group:
    first: Event
    count: int = 0
    samples: list[str] = field(default_factory=list)


def group_key(event: Event) -> tuple[str, str]:
    """What an event is grouped by: its dedup_key, else its fingerprint."""
    if event.dedup_key:
        return ("dedup", event.dedup_key)
    return ("fingerprint", fingerprint(event.message, event.service).key)


def fold(events: Iterable[Event], max_samples: int = MAX_SAMPLES) -> list[Event]:
    """One event per group, in order of first appearance: the first event's fields, summed counts, distinct samples."""
    if not 0 <= max_samples <= 10:
        raise ValueError("max_samples must be between 0 and 10 (Event.samples holds at most 10)")
    groups: dict[tuple[str, str], _Group] = {}
    for event in events:
        key = group_key(event)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _Group(first=event)
        group.count += event.count
        for sample in (event.message, *event.samples):
            if len(group.samples) >= max_samples:
                break
            sample = sample[:MAX_SAMPLE_CHARS]
            if sample not in group.samples:
                group.samples.append(sample)
    out: list[Event] = []
    for group in groups.values():
        remaining = group.count
        while remaining > 0:
            count = min(remaining, MAX_COUNT)
            out.append(group.first.model_copy(update={"count": count, "samples": list(group.samples)}))
            remaining -= count
    return out
