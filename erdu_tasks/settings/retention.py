"""The `retention` section: how long closed incidents stay in Postgres before `erdu prune` archives them.

    retention:
      incidents: 90d          # closed incidents whose close is older than this are archived and deleted ("off": keep all)
      receipts: 7d            # ingest's message receipts and rejected events (far beyond any redelivery)
      interval: 1h            # how often beat runs the prune
      batch: 500              # incidents per transaction (a prune never holds locks for long)
      archive_dir: null       # where the archive files go (default: {state_dir}/archive)

Only closed incidents are ever pruned: nothing open, acknowledged, escalated or resolved-not-yet-closed,
whatever its age. Each pruned incident is written first, whole (row, timeline, actions, deliveries, report),
to a gzip'd JSON-lines file in the archive directory, in the same transaction order: a prune that fails
leaves the incident in Postgres. What the incidents taught stays: the learned patterns and their success
figures are not touched, and the rollups behind /metrics and `erdu stats` keep counting pruned incidents.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from erdu_tasks.settings.common import Duration, Section


class RetentionConfig(Section):
    """How long history is kept and how the prune runs."""

    KEY: ClassVar[str] = "retention"

    incidents: Duration | None = timedelta(days=90)
    receipts: Duration = timedelta(days=7)
    interval: Duration = timedelta(hours=1)
    batch: int = Field(default=500, ge=1, le=10_000)
    archive_dir: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _off(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("incidents") in (False, "off", "never"):
            data = {**data, "incidents": None}
        return data

    @model_validator(mode="after")
    def _sane(self) -> "RetentionConfig":
        if self.incidents is not None and self.incidents < timedelta(hours=1):
            raise ValueError("retention.incidents must be at least 1h (or \"off\")")
        if self.receipts < timedelta(hours=1):
            raise ValueError("retention.receipts must be at least 1h: ingest needs them for redeliveries")
        if self.interval < timedelta(seconds=10):
            raise ValueError("retention.interval must be at least 10s")
        return self
