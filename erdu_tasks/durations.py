"""Durations as reports and summaries show them."""

from __future__ import annotations

from datetime import datetime


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """end - start in seconds, or None when either is missing."""
    return (end - start).total_seconds() if start and end else None


def human_duration(seconds: float | None, unknown: str = "-") -> str:
    """Seconds as a short human duration (ms, s, min, h)."""
    if seconds is None:
        return unknown
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
