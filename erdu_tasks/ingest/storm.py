"""Producer-side storm folding: turn raw log lines into a few ingest messages (one per fingerprint)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from erdu_tasks.ingest.detect.aggregate import fold
from erdu_tasks.model import Event

DEFAULT_BATCH_LINES = 5_000


def batches_from_lines(lines: Iterable[str], *, service: str | None, source: str = "log",
                       batch_lines: int = DEFAULT_BATCH_LINES) -> Iterator[list[dict]]:
    """Yield JSON-ready event batches: each covers up to batch_lines lines, folded by fingerprint."""
    chunk: list[Event] = []
    for line in lines:
        chunk.append(Event.model_construct(source=source, message=line, severity=None, service=service, host=None,
                                           labels={}, occurred_at=None, count=1, dedup_key=None, samples=[],
                                           details={}))
        if len(chunk) >= batch_lines:
            yield [e.model_dump(mode="json", exclude_defaults=True) for e in fold(chunk)]
            chunk = []
    if chunk:
        yield [e.model_dump(mode="json", exclude_defaults=True) for e in fold(chunk)]
