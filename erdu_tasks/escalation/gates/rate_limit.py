"""Rate-limit gate: at most `max_per_minute` notifications per channel and minute; the rest go into a digest."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from erdu_tasks.escalation.gates.base import Facts, GateDecision, GateName, Outcome, passing

DEFAULT_LIMIT = 20


@dataclass(frozen=True)
class RateLimitGate:
    """RATE_LIMITED when this notification's count in its window (counted by the caller) exceeds the limit."""

    limits: Mapping[str, int] = field(default_factory=dict)
    name: GateName = GateName.RATE_LIMIT

    def limit(self, channel: str) -> int:
        """The channel's notifications per minute."""
        return int(self.limits.get(channel, DEFAULT_LIMIT))

    def check(self, facts: Facts, now: datetime) -> GateDecision:
        """SEND within the limit, hold beyond it."""
        if facts.channel is None or facts.sent_in_window is None:
            return passing(self.name, "not a notification")
        limit, count = self.limit(facts.channel), facts.sent_in_window
        if count <= limit:
            return GateDecision(self.name, Outcome.PASS, "", count=count, limit=limit)
        return GateDecision(self.name, Outcome.RATE_LIMITED,
                            f"held by the rate limit ({limit}/minute; {count} this minute): counted in the next digest",
                            count=count, limit=limit)
