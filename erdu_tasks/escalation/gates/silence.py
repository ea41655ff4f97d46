"""Silence gate: an active silence (or a maintenance window in force) that matches keeps the incident quiet."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from erdu_tasks.escalation.gates.base import Facts, GateDecision, GateName, Outcome, passing
from erdu_tasks.escalation.silences import silencing


@dataclass(frozen=True)
class SilenceGate:
    """SILENCED while an active silence matches the incident (the one ending last is named)."""

    intervals: Mapping[str, Sequence[Any]] = field(default_factory=dict)   # for recurring silences
    name: GateName = GateName.SILENCE

    def check(self, facts: Facts, now: datetime) -> GateDecision:
        """The silence that covers the incident at now, if any."""
        if facts.incident is None:
            return passing(self.name, "no incident")
        silence = silencing(facts.silences, facts.incident, now, self.intervals)
        if silence is None:
            return passing(self.name)
        return GateDecision(self.name, Outcome.SILENCED,
                            f"silenced by {silence.id} ({silence.describe()}) until {silence.end().isoformat()}",
                            silence=silence)
