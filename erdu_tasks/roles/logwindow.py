"""Log evidence for the diagnostician: the lines around an event in the file it came from, read bounded.

The path comes from the event (labels["path"], set by the log monitor), so it is data, not a
command: a file is read only if it lies under a configured log root (`learning.evidence.log_roots`)
or is one of the log monitor's own files. At most `max_bytes` are read and at most
`lines_before + 1 + lines_after` lines of `max_line_chars` are kept.

The window is bounded by time: the event line is the incident's first occurrence (the line at its
byte offset, else the line with its message nearest in time to the first occurrence, else the
line nearest that time), and only lines stamped from `seconds_before` before it to
`seconds_after` after it are evidence (a line without a timestamp takes the one of the line
above it: a traceback's frames belong to their first line). When the lines carry no timestamps,
the window falls back to position (`bounded_by: position`) and says so. Lines that belong to
other incidents are taken out by the caller (`without_lines_of`), never the event line itself.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from erdu_tasks.settings.roles import EvidenceConfig

from erdu_tasks.files import open_regular, storable

_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:[.,](\d{1,9}))?\s*(Z|[+-]\d{2}:?\d{2})?")
_PATH_KEYS = ("path", "file", "log_path", "logfile")


@dataclass(frozen=True)
class LogLine:
    """One line of the window; `event` marks the line the window is centred on."""

    text: str
    event: bool = False


@dataclass(frozen=True)
class LogWindow:
    """The lines around the event, how they were found, or why none could be read."""

    path: str
    lines: list[LogLine] = field(default_factory=list)
    found_by: str = "none"          # message | offset | time | tail | none
    error: str | None = None
    bounded_by: str = "position"    # time: lines stamped around the event | position: lines before/after it
    start: str | None = None        # the time bounds (ISO-8601) when bounded by time
    end: str | None = None
    left_out: list[str] = field(default_factory=list)   # why lines near the event are not evidence

    def describe(self) -> str:
        """How the lines were chosen, in one phrase for the evidence."""
        if self.bounded_by == "time":
            how = f"stamped {self.start} to {self.end}"
        else:
            how = "by position (the lines carry no timestamps to bound them by time)"
        return f"found by {self.found_by}, {how}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def log_path_of(labels: dict[str, Any], error_details: dict[str, Any]) -> str | None:
    """The log file an event names: labels first, then the error details."""
    for source in (labels or {}, error_details or {}, (error_details or {}).get("details") or {}):
        if isinstance(source, dict):
            for key in _PATH_KEYS:
                value = source.get(key)
                if isinstance(value, str) and value.strip():
                    return value.strip()
    return None


def monitor_paths(monitors: Any) -> list[str]:
    """Absolute paths and globs named anywhere in the log monitor's settings (the files it tails)."""
    if hasattr(monitors, "model_dump"):   # the typed section: what was set, as erdu.yaml would say it
        monitors = monitors.model_dump(mode="json", exclude_defaults=True)
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str) and value.startswith("/"):
            found.append(value)
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk((monitors or {}).get("logs"))
    return found


def allowed(path: str, roots: list[str]) -> bool:
    """True if the real path is under one of the root directories or matches one of the globs."""
    if not os.path.isabs(path):
        return False
    real = os.path.realpath(path)
    for root in roots:
        if any(ch in root for ch in "*?["):
            # Compare real paths only: a symlink in an allowed directory must not lead elsewhere.
            resolved = os.path.join(os.path.realpath(os.path.dirname(root)), os.path.basename(root))
            if fnmatch.fnmatchcase(real, resolved) or fnmatch.fnmatchcase(real, root):
                return True
            continue
        real_root = os.path.realpath(root)
        if real == real_root or real.startswith(real_root.rstrip("/") + "/"):
            return True
    return False


def parse_timestamp(line: str) -> datetime | None:
    """The ISO-8601-like timestamp near the start of a log line (naive means UTC), if any."""
    m = _TIMESTAMP.search(line[:64])
    if not m:
        return None
    day, clock, fraction, zone = m.groups()
    try:
        moment = datetime.fromisoformat(f"{day}T{clock}")
    except ValueError:
        return None
    if fraction:
        moment = moment.replace(microsecond=int(fraction[:6].ljust(6, "0")))
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        hh, mm = int(zone[1:3]), int(zone[-2:])
        return moment.replace(tzinfo=timezone(sign * timedelta(hours=hh, minutes=mm)))
    return moment.replace(tzinfo=timezone.utc)


def read_window(path: str, *, message: str | None, at: datetime | None, cfg: EvidenceConfig,
                roots: list[str], offset: int | None = None) -> LogWindow:
    """The lines around the event: found by byte offset, by the message text, by time, or the file's tail."""
    if not allowed(path, roots):
        return LogWindow(path, error="not under a configured log root (learning.evidence.log_roots); not read")
    try:
        with open_regular(os.path.realpath(path)) as handle:   # never a FIFO (it would block), never a link
            size = os.fstat(handle.fileno()).st_size
            if offset is not None and 0 <= offset <= size:
                start = max(0, min(offset - cfg.max_bytes // 2, size - cfg.max_bytes))
            else:
                offset = None
                start = max(0, size - cfg.max_bytes)
            handle.seek(start)
            data = handle.read(min(cfg.max_bytes, size - start))
    except OSError as exc:
        return LogWindow(path, error=f"cannot read: {exc.strerror or exc}")
    lines = storable(data.decode("utf-8", "replace")).split("\n")
    if start + len(data) < size and len(lines) > 1:   # a line still being written at the end
        lines = lines[:-1]
    while lines and not lines[-1].strip():
        lines.pop()
    first_offset = start
    if start > 0 and len(lines) > 1:   # a cut first line is not evidence (unless it is all there is)
        first_offset += len(lines[0].encode("utf-8", "replace")) + 1
        lines = lines[1:]
    if not lines:
        return LogWindow(path, error="no complete lines in the read window")
    anchor, how = _anchor(lines, first_offset, offset, message, at, cfg)
    lo, hi = max(0, anchor - cfg.lines_before), min(len(lines), anchor + cfg.lines_after + 1)
    stamps = _stamps(lines)
    centre = stamps[anchor]
    if at is not None and any(stamps) and (centre is None or how == "tail"):   # no event line found: its time
        centre = _utc(at)
    bounds: tuple[datetime, datetime] | None = None
    if centre is not None:
        bounds = (centre - timedelta(seconds=cfg.seconds_before), centre + timedelta(seconds=cfg.seconds_after))
    cut = cfg.max_line_chars
    picked, outside = [], 0
    for i in range(lo, hi):
        if bounds is not None and i != anchor and not (stamps[i] is not None and bounds[0] <= stamps[i] <= bounds[1]):
            outside += 1
            continue
        text = lines[i]
        picked.append(LogLine(text if len(text) <= cut else text[:cut] + " …", i == anchor))
    if bounds is None:
        return LogWindow(path, picked, how)
    notes = [f"{outside} line(s) near the event stamped outside {cfg.seconds_before:g} s before to "
             f"{cfg.seconds_after:g} s after it"] if outside else []
    return LogWindow(path, picked, how, bounded_by="time", start=bounds[0].isoformat(), end=bounds[1].isoformat(),
                     left_out=notes)


def without_lines_of(window: LogWindow, owners: dict[int, str]) -> LogWindow:
    """The window without the lines (by position in `window.lines`) that belong to other incidents.

    `owners` maps a line's position to the incident it belongs to; the event line always stays.
    """
    drop = {i: inc for i, inc in owners.items() if 0 <= i < len(window.lines) and not window.lines[i].event}
    if not drop:
        return window
    kept = [line for i, line in enumerate(window.lines) if i not in drop]
    incidents = sorted(set(drop.values()))
    note = (f"{len(drop)} line(s) belong to other incidents and are not evidence for this one: "
            + ", ".join(incidents[:5]) + (" ..." if len(incidents) > 5 else ""))
    return replace(window, lines=kept, left_out=[*window.left_out, note])


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _stamps(lines: list[str]) -> list[datetime | None]:
    """Each line's timestamp; a line without one takes the one above it (a traceback's frames, a wrapped line)."""
    out: list[datetime | None] = []
    last: datetime | None = None
    for text in lines:
        stamp = parse_timestamp(text)
        if stamp is not None:
            last = stamp
        out.append(last)
    return out


def _anchor(lines: list[str], first_offset: int, offset: int | None, message: str | None,
            at: datetime | None, cfg: EvidenceConfig) -> tuple[int, str]:
    if offset is not None:
        position = first_offset
        for i, text in enumerate(lines):
            position += len(text.encode("utf-8", "replace")) + 1
            if position > offset:
                return i, "offset"
    needle = _needle(message)
    if needle:
        hits = [i for i in range(len(lines)) if needle in lines[i]]
        if hits:
            if at is not None:   # the first occurrence: the hit nearest in time to it, else the latest
                target = _utc(at)
                stamps = _stamps(lines)
                timed = [(abs((stamps[i] - target).total_seconds()), -i) for i in hits if stamps[i] is not None]
                if timed and min(timed)[0] <= cfg.window_seconds:
                    return -min(timed)[1], "message"
            return hits[-1], "message"
    if at is not None:
        target = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
        best: tuple[float, int] | None = None
        for i, text in enumerate(lines):
            stamp = parse_timestamp(text)
            if stamp is None:
                continue
            gap = abs((stamp - target).total_seconds())
            if gap <= cfg.window_seconds and (best is None or gap <= best[0]):
                best = (gap, i)
        if best is not None:
            return best[1], "time"
    return len(lines) - 1, "tail"


def _needle(message: str | None) -> str | None:
    """The first non-empty line of the message, short enough to be found inside a longer log line."""
    for line in (message or "").splitlines():
        line = line.strip()
        if len(line) >= 8:
            return line[:160]
    return None
