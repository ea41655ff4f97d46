"""Reading a log file from a byte offset into complete events: the pure half of the tailer.

Given an open file, an offset and a few flags, `read_events` returns the events (folded
multi-line tracebacks) that are complete, and the offset up to which they were taken. It
never returns half a line: a partial last line is held (the offset stays before it) until
its newline arrives, or until the caller says the hold has lasted long enough (`force`).
An unfinished Python traceback at the end of the file is held the same way. A line longer
than `max_line_bytes` is cut, marked, and its rest skipped (`skipping` carries over to the
next read, so a 10 MB line is read once, not kept in memory). Bytes that are not UTF-8
are replaced, never fatal.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from erdu_tasks.files import storable
from erdu_tasks.ingest.detect.multiline import LineFolder

HEAD_BYTES = 1024
"""How much of a file's start identifies it (with its device and inode)."""

CHUNK = 1024 * 1024
_PY_START = "Traceback (most recent call last):"
_PY_CHAIN = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)


@dataclass(frozen=True)
class FileId:
    """A file's identity: device and inode."""

    dev: int
    ino: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileId":
        """The identity in a stat result."""
        return cls(int(st.st_dev), int(st.st_ino))


def head_hash(handle: BinaryIO, length: int) -> str:
    """SHA-1 of the first `length` bytes ("" when the file is shorter than that)."""
    handle.seek(0)
    data = handle.read(length)
    if len(data) < length:
        return ""
    return hashlib.sha1(data).hexdigest()


def line_start_before(handle: BinaryIO, size: int, window: int = 65536) -> tuple[int, bool]:
    """Where the last complete line ends at or before `size`; (offset, inside_a_long_line)."""
    if size == 0:
        return 0, False
    base = max(0, size - window)
    handle.seek(base)
    data = handle.read(size - base)
    cut = data.rfind(b"\n")
    if cut >= 0:
        return base + cut + 1, False
    if base == 0:
        return 0, False
    return size, True  # no newline in the last window: start after it and skip to the next one


@dataclass
class ReadResult:
    """What one read produced and where the next one starts."""

    events: list[str]
    end: int
    skipping: bool
    held: bool
    eof: bool
    lines: int = 0
    bytes_read: int = 0
    truncated_lines: int = 0


@dataclass
class _Lines:
    """The lines fed so far (bounded), to find where a held event starts."""

    maxlen: int
    items: deque[tuple[int, str]] = field(init=False)

    def __post_init__(self) -> None:
        self.items = deque(maxlen=self.maxlen)


TRUNCATED_MARK = " …[line truncated: "
"""What a cut line ends with (followed by how many bytes were dropped)."""


def _decode(raw: bytes | bytearray, dropped: int, *, unfinished: bool = False) -> str:
    text = storable(bytes(raw).decode("utf-8", errors="replace"))
    if unfinished:
        text += f"{TRUNCATED_MARK}{dropped}+ more bytes]"
    elif dropped:
        text += f"{TRUNCATED_MARK}{dropped} more bytes]"
    return text


_CONTINUES = re.compile(
    r"^(?:\s|Traceback \(|During handling|The above exception|Caused by|Suppressed|\.\.\. \d"
    r"|(?:Exception in thread )?(?:[\w$]+\.)+[\w$]*(?:Exception|Error|Throwable)\b)"
)


def may_continue(partial: str) -> bool:
    """True when a line still being written could belong to the event before it (a frame, a cause...)."""
    return bool(_CONTINUES.match(partial))


def unfinished_trace(events: list[str]) -> bool:
    """True when the last event is a Python traceback still waiting for its exception line."""
    if not events or _PY_START not in events[-1]:
        return False
    last = events[-1].rsplit("\n", 1)[-1]
    stripped = last.strip()
    return not stripped or stripped in (_PY_START, *_PY_CHAIN) or last[:1].isspace()


def _find_start(lines: deque[tuple[int, str]], pending: list[str], make_folder: Callable[[], LineFolder],
                max_chars: int) -> int | None:
    """Offset of the line the pending events start at: the shortest tail of lines that folds into them."""
    first = pending[0].split("\n", 1)[0]
    items = list(lines)
    for k in range(len(items) - 1, -1, -1):
        if items[k][1].rstrip("\r\n")[:max_chars] != first:
            continue
        folder = make_folder()
        emitted: list[str] = []
        for _, text in items[k:]:
            emitted += folder.feed(text)
        if not emitted and folder.flush() == pending:
            return items[k][0]
    return None


def read_events(handle: BinaryIO, start: int, *, skipping: bool = False, max_line_bytes: int = 65536,
                budget: int = 8 * 1024 * 1024, force: bool = False, max_event_lines: int = 200) -> ReadResult:
    """Read complete events from `start`; see the module docstring for holding, capping and skipping."""
    max_chars = max_line_bytes + 64
    budget = max(budget, max_line_bytes + 1)  # a partial line always completes or reaches the cap

    def make_folder() -> LineFolder:
        return LineFolder(max_lines=max_event_lines, max_line_chars=max_chars)

    folder = make_folder()
    recent = _Lines(maxlen=4 * max_event_lines + 16)
    events: list[str] = []
    handle.seek(start)
    pos = start
    cur = bytearray()
    cur_start = start
    dropped = 0
    lines = truncated = read_total = 0
    eof = False

    def take(text: str, at: int) -> None:
        nonlocal lines
        lines += 1
        recent.items.append((at, text))
        events.extend(folder.feed(text))

    while read_total < budget:
        chunk = handle.read(min(CHUNK, budget - read_total))
        if not chunk:
            eof = True
            break
        read_total += len(chunk)
        i = 0
        n = len(chunk)
        while i < n:
            nl = chunk.find(b"\n", i)
            stop = nl if nl >= 0 else n
            if skipping:  # the rest of a line already taken (cut): drop it up to its newline
                pos += stop - i + (1 if nl >= 0 else 0)
                if nl >= 0:
                    skipping = False
                    cur_start = pos
                i = stop + 1 if nl >= 0 else n
                continue
            room = max_line_bytes - len(cur)
            if room > 0:
                cur += chunk[i:min(stop, i + room)]
            dropped += max(0, (stop - i) - max(room, 0))
            if nl < 0:
                pos += stop - i
                break
            pos += stop - i + 1
            i = nl + 1
            if dropped:
                truncated += 1
            take(_decode(cur, dropped), cur_start)
            cur.clear()
            dropped = 0
            cur_start = pos
    partial = bool(cur) or dropped > 0
    end = pos
    if partial and (len(cur) + dropped >= max_line_bytes or force):
        # A long line still being written, or a partial line held too long: take what is there
        # and skip its rest when it comes.
        long_line = len(cur) + dropped >= max_line_bytes
        truncated += 1 if long_line else 0
        take(_decode(cur, dropped, unfinished=long_line), cur_start)
        skipping, partial = True, False
    elif partial:
        end = cur_start
    pending = folder.flush()
    held = partial
    continued = partial and may_continue(_decode(cur[:200], 0))
    if pending and not force and (continued or not eof or unfinished_trace(pending)):
        at = _find_start(recent.items, pending, make_folder, max_chars)
        # Hold only with progress (or at the end of the file, where time will decide): an event
        # bigger than the budget must not be re-read forever.
        if at is not None and (at > start or eof):
            end, held, skipping = at, True, False
            pending = []
    events.extend(pending)
    return ReadResult(events=events, end=end, skipping=skipping, held=held, eof=eof, lines=lines,
                      bytes_read=read_total, truncated_lines=truncated)
