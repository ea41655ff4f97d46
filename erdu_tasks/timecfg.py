"""Checks shared by every configuration that names a time zone or a time of day."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def valid_timezone(value: str) -> str:
    """The IANA zone name, or ValueError saying what is expected."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {value!r} (use an IANA name such as Europe/Berlin)") from None
    return value


def quoted_time(value: Any, example: str) -> Any:
    """Refuse a number where a time of day belongs: YAML reads an unquoted 22:00 as 1320."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f'quote times in YAML, e.g. "{example}" (unquoted, YAML reads {example} as a number)')
    return value
