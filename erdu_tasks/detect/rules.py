"""Classification rules (first version: the seed's patterns, built in)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..model import Event, Severity

_IGNORE = [r"DummyErrorForAudit", r"ExpectedException.*for_retry", r"Test.*Error", r"Health.*Check", r"Ping.*Test"]
_CRITICAL = [r"OutOfMemoryError", r"Database.*connection.*failed", r"Authentication.*failed",
             r"Payment.*processor.*error", r"Data.*corruption", r"Security.*breach"]
_PERFORMANCE = [r"Response.*time.*exceeded", r"Timeout.*error", r"Queue.*overflowing",
                r"Resource.*utilization.*high", r"Memory.*usage.*critical"]


@dataclass(frozen=True)
class Classification:
    """What the rules say about one event."""

    ignore: bool
    severity: Severity
    tags: tuple[str, ...]
    title: str | None = None
    rule_names: tuple[str, ...] = ()


class RuleSet:
    """The compiled rules."""

    def __init__(self) -> None:
        self._ignore = [re.compile(p, re.I) for p in _IGNORE]
        self._critical = [re.compile(p, re.I) for p in _CRITICAL]
        self._perf = [re.compile(p, re.I) for p in _PERFORMANCE]

    @classmethod
    def load(cls, user_file: Path | None = None) -> "RuleSet":
        """The built-in rules plus the user's file."""
        return cls()

    def classify(self, event: Event) -> Classification:
        """Severity, tags and ignore decision for an event."""
        msg = event.message
        if any(p.search(msg) for p in self._ignore):
            return Classification(True, Severity.P5, ())
        if any(p.search(msg) for p in self._critical):
            sev = Severity.P1
        elif any(p.search(msg) for p in self._perf):
            sev = Severity.P2
        else:
            sev = Severity.P3
        if event.severity is not None:
            sev = event.severity
        up = msg.upper()
        tags = []
        for tag, words in (("critical", ("CRITICAL", "FATAL")), ("performance", ("TIMEOUT", "SLOW")),
                           ("connectivity", ("CONNECTION", "NETWORK")), ("database", ("DATABASE", "SQL")),
                           ("api", ("API", "HTTP"))):
            if any(w in up for w in words):
                tags.append(tag)
        return Classification(False, sev, tuple(tags))
