"""A log line's header (timestamp, host, program[pid], logger) apart from its message.

Classification rules and the diagnostician's signatures read the message only: a service
called `api` writes `api[812]: ...` at the start of every line, and that header says nothing
about what went wrong. The level (ERROR, WARN ...) is part of the message: it says how bad.

Recognised headers, at the start of the first line only (the rest of a folded traceback is kept):

- a timestamp: ISO-8601 (`2025-06-11T10:00:00Z`, `2025-06-11 10:00:00,123`), optionally in
  brackets, or syslog's `Jun 11 10:00:00`; then, optionally, a host;
- `program[pid]:` (syslog, journald), with or without a timestamp before it;
- after a timestamp: `program:`, `LEVEL logger:`, `LEVEL [logger]`, `- logger - LEVEL -`;
- a compose-style `service-1  | ` at the very start.

A word that is a level (`error:`) is never taken for a logger or program. Anything else is
message: when in doubt, text stays in the message.
"""

from __future__ import annotations

import re

_LEVELS = r"(?:TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|ERR|CRITICAL|CRIT|FATAL|SEVERE|ALERT|EMERG|PANIC)"
_LEVEL_WORD = re.compile(rf"(?i)^{_LEVELS}$")
_ISO = (r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?(?:\s?(?:Z|UTC|[+-]\d{2}:?\d{2}))?")
_SYSLOG = (r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+\d{1,2}\s+\d{2}:\d{2}:\d{2}")
_NAME = r"[A-Za-z_][\w.@/-]{0,63}"
_PROG_PID = rf"{_NAME}\[\d{{1,10}}\]:?"

_COMPOSE = re.compile(r"^[A-Za-z0-9][\w.-]{0,62}(?:-\d+)?\s*\|\s+")
_TIMESTAMP = re.compile(rf"^\s*(?:\[(?:{_ISO}|{_SYSLOG})\]|{_ISO}|{_SYSLOG})(?:\s+-)?\s+")
_HOST_PROG = re.compile(rf"^(?:[\w.-]{{1,253}}\s+)?{_PROG_PID}\s+")
_PROG_PID_ONLY = re.compile(rf"^\s*{_PROG_PID}\s+")
_PROG = re.compile(rf"^(?P<name>{_NAME}):\s+")
_LEVEL_LOGGER = re.compile(rf"^(?P<level>\[?{_LEVELS}\]?:?)\s+(?:\[(?P<bracketed>{_NAME})\]|(?P<name>{_NAME}):)\s+")
_DASHED = re.compile(rf"^-?\s*(?P<name>{_NAME})\s+-\s+(?P<level>{_LEVELS})\s+-\s+")


def _not_level(match: re.Match[str] | None, group: str = "name") -> bool:
    return match is not None and (match.group(group) is None or not _LEVEL_WORD.match(match.group(group)))


def split_prefix(text: str) -> tuple[str, str]:
    """(header, message) of a log line; the header is "" when none is recognised."""
    first, nl, rest = text.partition("\n")
    line, cut = first, []

    def drop(m: re.Match[str], keep_level: bool = False) -> None:
        nonlocal line
        cut.append(line[:m.end()].strip() if not keep_level else
                   (m.groupdict().get("bracketed") or m.groupdict().get("name") or "").strip())
        line = (f"{m.group('level').strip('[]:')} " if keep_level else "") + line[m.end():]

    def logger(m: re.Match[str] | None) -> bool:
        return m is not None and _not_level(m, "name" if m.group("name") else "bracketed")

    m = _COMPOSE.match(line)
    if m:
        drop(m)
    if (m := _TIMESTAMP.match(line)) is not None:
        drop(m)
        if (m := _HOST_PROG.match(line)) is not None:
            drop(m)
        elif _not_level(m := _PROG.match(line)):
            drop(m)
        if _not_level(m := _DASHED.match(line)):
            drop(m, keep_level=True)
        elif logger(m := _LEVEL_LOGGER.match(line)):
            drop(m, keep_level=True)
    elif (m := _PROG_PID_ONLY.match(line)) is not None:
        drop(m)
        if logger(m := _LEVEL_LOGGER.match(line)):
            drop(m, keep_level=True)
    if not cut:
        return "", text
    return " ".join(c for c in cut if c), line + nl + rest


def message_of(text: str) -> str:
    """The line's message without its header (the whole text when it has none)."""
    return split_prefix(text)[1]
