"""Reading a log file from an offset: complete events only, held partial lines, capped long lines."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from erdu_tasks.monitors.logread import head_hash, line_start_before, read_events, unfinished_trace

TRACE = (b"2024-05-01 10:00:00 ERROR payment failed\n"
         b"Traceback (most recent call last):\n"
         b'  File "app.py", line 10, in pay\n'
         b"    charge()\n"
         b"ValueError: card declined\n")


def read_all(data: bytes, **kw):
    return read_events(io.BytesIO(data), 0, **kw)


def test_it_returns_complete_lines_and_stops_after_the_last_newline():
    r = read_all(b"ERROR one\nINFO two\n")
    assert r.events == ["ERROR one", "INFO two"]
    assert r.end == len(b"ERROR one\nINFO two\n") and r.eof and not r.held


def test_it_holds_a_partial_last_line_until_its_newline_arrives():
    data = b"ERROR one\nERROR tw"
    r = read_all(data)
    assert r.end == len(b"ERROR one\n") and r.held
    assert r.events == ["ERROR one"]  # a new record is being written: the one before it is complete
    rest = read_events(io.BytesIO(data + b"o\n"), r.end)
    assert "ERROR two" in rest.events and rest.end == len(data) + 2
    assert (r.events + rest.events).count("ERROR one") == 1


def test_a_partial_frame_holds_the_event_it_may_continue():
    data = b"INFO x\nERROR one\njava.lang.IllegalStateException: boom\n\tat com.x.Y.z(Y.java:1)\n\tat com.x"
    r = read_all(data)
    assert r.events == ["INFO x"] and r.end == len(b"INFO x\n") and r.held


def test_a_partial_line_held_past_its_timeout_is_taken_and_its_rest_skipped():
    data = b"ERROR no newline yet"
    r = read_all(data, force=True)
    assert r.events == ["ERROR no newline yet"] and r.end == len(data) and r.skipping
    later = read_events(io.BytesIO(data + b" and its rest\nERROR next\n"), r.end, skipping=True)
    assert later.events == ["ERROR next"]


def test_a_traceback_is_one_event_with_the_line_before_it():
    r = read_all(TRACE + b"INFO after\n")
    assert r.events[0].startswith("2024-05-01 10:00:00 ERROR payment failed\nTraceback")
    assert r.events[0].endswith("ValueError: card declined")
    assert r.events[1] == "INFO after"


def test_an_unfinished_traceback_at_the_end_of_the_file_is_held_from_its_first_line():
    cut = TRACE.index(b"    charge()")
    head = b"INFO before\n" + TRACE[:cut]
    r = read_all(head)
    assert r.held and r.end == len(b"INFO before\n")
    assert r.events == ["INFO before"]
    whole = read_events(io.BytesIO(b"INFO before\n" + TRACE), r.end)
    assert len(whole.events) == 1 and whole.events[0].endswith("ValueError: card declined")


def test_a_held_traceback_is_taken_as_it_is_once_forced():
    cut = TRACE.index(b"    charge()")
    r = read_all(TRACE[:cut], force=True)
    assert not r.held and r.end == cut and len(r.events) == 1


def test_a_10_mb_line_is_cut_marked_and_reading_goes_on():
    data = b"ERROR " + b"x" * (10 * 1024 * 1024) + b"\nERROR after the long line\n"
    r = read_all(data, max_line_bytes=65536)
    while not r.eof:  # the budget may stop a read; the caller reads again from r.end
        more = read_events(io.BytesIO(data), r.end, skipping=r.skipping, max_line_bytes=65536)
        r.events += more.events
        r.end, r.eof, r.skipping = more.end, more.eof, more.skipping
    assert len(r.events) == 2
    assert len(r.events[0]) < 70_000 and "line truncated" in r.events[0]
    assert r.events[1] == "ERROR after the long line"
    assert r.end == len(data)


def test_a_long_line_still_being_written_is_taken_once_and_its_rest_skipped():
    data = b"ERROR " + b"y" * 200_000
    r = read_all(data, max_line_bytes=1024)
    assert len(r.events) == 1 and "line truncated" in r.events[0] and r.skipping and r.end == len(data)
    more = read_events(io.BytesIO(data + b"y" * 1000 + b"\nERROR next\n"), r.end, skipping=True, max_line_bytes=1024)
    assert more.events == ["ERROR next"]


def test_binary_garbage_and_invalid_utf8_never_break_reading():
    data = bytes(range(256)) * 40 + b"\n\xff\xfeERROR caf\xe9 broken\n\x00\x00ERROR nul\n"
    r = read_all(data)
    assert r.end == len(data)
    assert any("ERROR caf\ufffd broken" in e for e in r.events)
    assert any("ERROR nul" in e for e in r.events)


def test_crlf_lines_lose_their_carriage_return():
    assert read_all(b"ERROR windows\r\n").events == ["ERROR windows"]


def test_unfinished_trace_recognises_frames_and_the_header():
    assert unfinished_trace(["x\nTraceback (most recent call last):"])
    assert unfinished_trace(["x\nTraceback (most recent call last):\n  File \"a.py\", line 1, in f"])
    assert not unfinished_trace(["x\nTraceback (most recent call last):\n  File \"a\"\nKeyError: 1"])
    assert not unfinished_trace(["ERROR plain"])


def test_line_start_before_finds_the_end_of_the_last_complete_line(tmp_path):
    p = tmp_path / "f.log"
    p.write_bytes(b"one\ntwo\nthr")
    with p.open("rb") as h:
        assert line_start_before(h, p.stat().st_size) == (8, False)
        assert head_hash(h, 3) == head_hash(io.BytesIO(b"one"), 3)
        assert head_hash(h, 100) == ""


@settings(max_examples=60, deadline=None)
@given(lines=st.lists(st.sampled_from([b"ERROR a", b"INFO b", b"", b"\xff\xfe", b"Traceback (most recent call last):",
                                       b'  File "x.py", line 1, in f', b"KeyError: k", b"ERROR " + b"z" * 300]),
                      max_size=40),
       cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=6))
def test_reading_in_any_pieces_takes_every_byte_once(lines, cuts):
    """Whatever the write boundaries, consecutive reads cover the file exactly once and end at its end."""
    data = b"\n".join(lines) + b"\n"
    seen_end, skipping, events = 0, False, []
    for cut in sorted(c for c in cuts if c < len(data)) + [len(data)]:
        r = read_events(io.BytesIO(data[:cut]), seen_end, skipping=skipping, max_line_bytes=256)
        assert r.end >= seen_end
        seen_end, skipping = r.end, r.skipping
        events += r.events
    final = read_events(io.BytesIO(data), seen_end, skipping=skipping, max_line_bytes=256, force=True)
    events += final.events
    assert final.end == len(data)
    whole = read_events(io.BytesIO(data), 0, max_line_bytes=256, force=True).events
    # The same number of error lines, whichever way the file was cut into reads.
    assert sum(e.count("ERROR a") for e in events) == sum(e.count("ERROR a") for e in whole)


@pytest.mark.parametrize("budget", [4096, 70_000])
def test_a_small_budget_still_makes_progress(budget):
    data = (b"ERROR " + b"q" * 3000 + b"\n") * 50
    end, n = 0, 0
    for _ in range(200):
        r = read_events(io.BytesIO(data), end, budget=budget, max_line_bytes=4096)
        n += len(r.events)
        end = r.end
        if r.eof and not r.held:
            break
    assert end == len(data) and n == 50
