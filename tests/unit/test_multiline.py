"""The line folder: tracebacks and stack traces become one event, everything else stays a line."""

from __future__ import annotations

import pytest

from erdu_tasks.ingest.detect.fingerprint import fingerprint
from erdu_tasks.ingest.detect.multiline import LineFolder


def fold_all(text: str, folder: LineFolder | None = None) -> list[str]:
    folder = folder or LineFolder()
    events: list[str] = []
    for line in text.split("\n"):
        events += folder.feed(line + "\n")
    return events + folder.flush()


PY_LOG = """\
2024-05-01 10:00:00 INFO starting
2024-05-01 10:00:01 ERROR request 7 failed
Traceback (most recent call last):
  File "/srv/app/handlers.py", line 42, in handle
    result = parse(payload)
  File "/srv/app/util.py", line 7, in parse
    return int(value)
           ^^^^^^^^^^
ValueError: invalid literal for int() with base 10: 'abc'
2024-05-01 10:00:02 INFO next request"""

CHAINED = """\
Traceback (most recent call last):
  File "a.py", line 1, in f
    g()
KeyError: 'x'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "a.py", line 3, in f
    raise RuntimeError("wrapped")
RuntimeError: wrapped
after"""

JAVA_LOG = """\
2024-05-01 10:00:02 ERROR c.e.Svc - failed to process order 17
java.lang.IllegalStateException: bad state 42
\tat com.example.Foo.bar(Foo.java:10)
\tat com.example.Foo.main(Foo.java:5)
Caused by: java.io.IOException: disk full
\tat com.example.Disk.write(Disk.java:99)
\t... 2 more
2024-05-01 10:00:03 WARN plain line"""


def test_plain_lines_are_one_event_each():
    assert fold_all("a\nb\n\nc") == ["a", "b", "c"]


def test_a_python_traceback_joins_the_line_that_logged_it():
    events = fold_all(PY_LOG)
    assert len(events) == 3
    assert events[0] == "2024-05-01 10:00:00 INFO starting"
    assert events[1].startswith("2024-05-01 10:00:01 ERROR request 7 failed\nTraceback")
    assert events[1].endswith("ValueError: invalid literal for int() with base 10: 'abc'")
    assert events[2] == "2024-05-01 10:00:02 INFO next request"
    assert "ValueError" in fingerprint(events[1]).template


def test_chained_python_tracebacks_are_one_event():
    events = fold_all(CHAINED)
    assert len(events) == 2 and events[1] == "after"
    assert "During handling of the above exception" in events[0]
    assert events[0].endswith("RuntimeError: wrapped")
    assert fingerprint(events[0]).template.startswith("Traceback RuntimeError(wrapped) <- KeyError(<*>)")


def test_a_java_stack_trace_with_causes_is_one_event():
    events = fold_all(JAVA_LOG)
    assert len(events) == 2
    trace = events[0]
    assert trace.startswith("2024-05-01 10:00:02 ERROR c.e.Svc - failed to process order 17\njava.lang.Illegal")
    assert "Caused by: java.io.IOException" in trace and trace.endswith("\t... 2 more")
    assert events[1] == "2024-05-01 10:00:03 WARN plain line"
    assert "java.io.IOException" in fingerprint(trace).template


def test_an_exception_line_without_frames_stays_its_own_event():
    assert fold_all("first line\njava.lang.RuntimeException: no frames\nlast") == [
        "first line",
        "java.lang.RuntimeException: no frames",
        "last",
    ]


def test_a_trace_at_the_start_of_input_is_an_event():
    events = fold_all("\tat com.example.A.b(A.java:1)\n\tat com.example.A.c(A.java:2)\nnext")
    assert events == ["\tat com.example.A.b(A.java:1)\n\tat com.example.A.c(A.java:2)", "next"]


def test_events_are_returned_as_soon_as_they_are_complete():
    folder = LineFolder()
    assert folder.feed("one") == []
    assert folder.pending
    assert folder.feed("Traceback (most recent call last):") == []
    assert folder.feed('  File "x.py", line 1, in f') == []
    assert folder.feed("OSError: boom") == []
    assert folder.feed("two") == [
        'one\nTraceback (most recent call last):\n  File "x.py", line 1, in f\nOSError: boom'
    ]
    assert folder.flush() == ["two"]
    assert not folder.pending
    assert folder.flush() == []


def test_a_held_exception_header_is_not_lost_at_flush():
    folder = LineFolder()
    folder.feed("log line")
    folder.feed("java.lang.IllegalStateException: x")
    assert folder.flush() == ["log line", "java.lang.IllegalStateException: x"]


def test_a_huge_trace_is_bounded_but_keeps_its_last_line():
    folder = LineFolder(max_lines=20)
    lines = ["Traceback (most recent call last):"]
    for i in range(5000):
        lines += [f'  File "m{i}.py", line {i}, in f{i}', "    call()"]
    lines.append("RecursionError: maximum recursion depth exceeded")
    events: list[str] = []
    for line in lines:
        events += folder.feed(line)
    events += folder.flush()
    assert len(events) == 1
    out = events[0].split("\n")
    assert len(out) <= 21
    assert out[-1] == "RecursionError: maximum recursion depth exceeded"
    assert out[-2] == f"\t... {len(lines) - 19 - 1} lines omitted ..."
    assert fingerprint(events[0]).template.startswith("Traceback RecursionError")


def test_very_long_lines_are_cut():
    folder = LineFolder(max_line_chars=100)
    folder.feed("x" * 10_000)
    assert folder.flush() == ["x" * 100]


def test_bad_limits_are_refused():
    with pytest.raises(ValueError):
        LineFolder(max_lines=1)


def test_the_indented_rest_of_an_exception_message_stays_with_its_traceback():
    text = ("Traceback (most recent call last):\n  File \"app.py\", line 3, in open_db\n    psycopg.connect()\n"
            "psycopg.OperationalError: connection failed: connection refused\n"
            "\tIs the server running on that host and accepting TCP/IP connections?\n"
            "2024-05-01 10:00:02 INFO next request")
    events = fold_all(text)
    assert len(events) == 2 and events[0].endswith("accepting TCP/IP connections?")
    assert events[1] == "2024-05-01 10:00:02 INFO next request"
