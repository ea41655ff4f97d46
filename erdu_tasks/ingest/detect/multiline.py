"""Fold Python tracebacks and Java stack traces into the log event they belong to.

The log tailer feeds lines one at a time; the folder returns events as soon as they are
complete (an event is complete when a line arrives that does not continue it) and
``flush()`` returns the one still open, for the end of a file or an idle tail.

What continues an event:

- Python: ``Traceback (most recent call last):`` (it belongs to the line before it, as
  ``logging.exception`` writes them), then everything up to and including the exception
  line (``ValueError: ...``) with the indented lines that continue its message, and the chaining text between tracebacks ("During handling of
  the above exception ..." / "The above exception was the direct cause ...");
- Java: ``\\tat frame(...)``, ``... N more``, ``Caused by:``, ``Suppressed:``, and the
  exception header (``java.lang.IllegalStateException: ...``) when the next line is a frame.

Size is bounded: an event keeps its first ``max_lines`` lines and its last line (for a
Python traceback, the exception line), with a marker saying how many were left out in
between; each line is cut at ``max_line_chars``.
"""

from __future__ import annotations

import re

_PY_START = "Traceback (most recent call last):"
_PY_CHAIN = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
_JAVA_CONTINUATION = re.compile(
    r"^(?:\s+at\s+\S|\s*\.\.\.\s*\d+\s+(?:more|common frames omitted)|\s*(?:Caused by|Suppressed):\s)"
)
_JAVA_FRAME = re.compile(r"^\s+at\s+\S")
_JAVA_HEADER = re.compile(
    r"^(?:Exception in thread \"[^\"]*\"\s+)?(?:[A-Za-z_$][\w$]*\.)+[A-Za-z_$][\w$]*(?:Exception|Error|Throwable)\b"
)

_NONE, _PY_FRAMES, _PY_DONE = 0, 1, 2


class LineFolder:
    """Fed lines one at a time, returns complete (possibly multi-line) events."""

    def __init__(self, max_lines: int = 200, max_line_chars: int = 4000) -> None:
        if max_lines < 2 or max_line_chars < 1:
            raise ValueError("max_lines must be at least 2 and max_line_chars at least 1")
        self.max_lines = max_lines
        self.max_line_chars = max_line_chars
        self._lines: list[str] = []
        self._omitted = 0
        self._tail: str | None = None
        self._py = _NONE
        self._held: list[str] = []  # lines whose place depends on the next line

    def feed(self, line: str) -> list[str]:
        """Take one line; return the events it completed (often none, sometimes one)."""
        line = line.rstrip("\r\n")[: self.max_line_chars]
        done: list[str] = []
        if self._held and self._held[0].strip():
            # An exception header: part of the open event if a stack frame follows it.
            header, self._held = self._held[0], []
            if _JAVA_FRAME.match(line):
                self._append(header)
                self._append(line)
                return done
            self._emit_into(done)
            self._start(header)
        elif self._held:
            # Blank lines after a finished traceback: kept if a chained traceback follows.
            stripped = line.strip()
            if not stripped:
                if len(self._held) < 3:
                    self._held.append(line)
                return done
            if stripped in _PY_CHAIN or stripped == _PY_START:
                for blank in self._held:
                    self._append(blank)
            self._held = []
        self._take(line, done)
        return done

    def flush(self) -> list[str]:
        """Return the event still open (if any), for the end of input."""
        done: list[str] = []
        held, self._held = self._held, []
        if held and held[0].strip():
            self._emit_into(done)
            self._start(held[0])
        self._emit_into(done)
        return done

    @property
    def pending(self) -> bool:
        """True when an event is open and waiting for more lines or a flush."""
        return bool(self._lines or self._held)

    # --- the state machine -----------------------------------------------------------------

    def _take(self, line: str, done: list[str]) -> None:
        stripped = line.strip()
        if stripped == _PY_START or line.startswith(_PY_START):
            if not self._lines:
                self._start(line)
            else:
                self._append(line)
            self._py = _PY_FRAMES
            return
        if self._py == _PY_FRAMES:
            if stripped and not line[:1].isspace():
                self._py = _PY_DONE  # the exception line ends this traceback
            self._append(line)
            return
        if self._py == _PY_DONE:
            if not stripped:
                self._held.append(line)
                return
            if line[:1].isspace():
                self._append(line)  # the rest of a multi-line exception message (psycopg's hint)
                return
            if stripped in _PY_CHAIN:
                self._append(line)
                return
        if not stripped:
            return  # a blank line between events is not an event
        if self._lines and _JAVA_CONTINUATION.match(line):
            self._append(line)
            return
        if self._lines and _JAVA_HEADER.match(line):
            self._held.append(line)
            return
        self._emit_into(done)
        self._start(line)

    def _start(self, line: str) -> None:
        self._lines = [line]
        self._omitted = 0
        self._tail = None
        self._py = _NONE

    def _append(self, line: str) -> None:
        if len(self._lines) < self.max_lines - 1:
            self._lines.append(line)
        else:
            if self._tail is not None:
                self._omitted += 1
            self._tail = line

    def _emit_into(self, done: list[str]) -> None:
        if not self._lines:
            return
        lines = self._lines
        if self._tail is not None:
            if self._omitted:
                lines = [*lines, f"\t... {self._omitted} lines omitted ..."]
            lines = [*lines, self._tail]
        done.append("\n".join(lines))
        self._lines = []
        self._omitted = 0
        self._tail = None
        self._py = _NONE
