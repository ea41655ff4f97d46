"""People are told the truth: evidence bounded by time and incident, messages without their headers,
no tag alone as a root cause, "cause not yet known" over a guess."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from erdu_tasks.ingest.detect.rules import RuleSet
from erdu_tasks.logline import message_of, split_prefix
from erdu_tasks.model import Event, Incident, Severity, Status
from erdu_tasks.roles import diagnostician, logwindow
from erdu_tasks.settings.roles import EvidenceConfig

T0 = datetime(2026, 12, 1, 23, 0, 0, tzinfo=timezone.utc)
CFG = EvidenceConfig()   # the defaults: 20 lines before, 10 after; 10 s before, 5 s after


def stamp(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def incident(**kw) -> Incident:
    base = dict(id="INC-20261201230000-0000abcd", fingerprint="fp-1", title="checkout failed for order <*>",
                description="ERROR checkout failed for order 17", severity=Severity.P3, status=Status.ASSIGNED,
                source="log", service="api", tags=[], template="ERROR checkout failed for order <*>",
                created_at=T0)
    base.update(kw)
    return Incident(**base)


# ---- the header of a log line is not its message ---------------------------------------------

PREFIX_CASES = [
    # (line, message)
    ("api[812]: GET /v1/orders failed", "GET /v1/orders failed"),
    ("2026-12-01T23:00:00Z api[812]: ERROR upstream failed", "ERROR upstream failed"),
    ("Dec  1 23:00:00 host-1 api[812]: disk error", "disk error"),
    ("2026-12-01T23:00:00Z WARN widgets: write failed: No space left on device",
     "WARN write failed: No space left on device"),
    ("2026-12-01 23:00:00,123 - api.http - ERROR - request failed", "ERROR request failed"),
    ("2026-12-01 23:00:00,123 ERROR [api.http] request failed", "ERROR request failed"),
    ("[2026-12-01T23:00:00Z] ERROR boom", "ERROR boom"),
    ("web-1  | 2026-12-01 23:00:00 ERROR boom", "ERROR boom"),
    # a level word is never taken for a logger; text without a header is all message
    ("2026-12-01 23:00:00 error: disk full", "error: disk full"),
    ("Connection refused: api down", "Connection refused: api down"),
    ("ERROR api: failed", "ERROR api: failed"),
    ("api[1]: Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: y",
     "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: y"),
]


@pytest.mark.parametrize("line, message", PREFIX_CASES, ids=[c[0][:40] for c in PREFIX_CASES])
def test_the_message_of_a_log_line_has_no_header(line, message):
    assert message_of(line) == message
    header, _ = split_prefix(line)
    assert bool(header) is (line != message)


RULE_CASES = [
    # (message, tag expected on it, present?)
    ("api[812]: ERROR checkout failed for order 17", "api", False),          # the service's own name
    ("2026-12-01T23:00:00Z api[812]: ERROR checkout failed", "api", False),
    ("2026-12-01T23:00:00Z checkout[3]: ERROR call to the payments api failed", "api", True),
    ("api[812]: ERROR upstream HTTP 502 from payments", "api", True),       # the message says it
    ("timeout-svc[4]: ERROR checkout failed", "performance", False),
    ("db-proxy[4]: ERROR sql connection lost", "database", True),
]


@pytest.mark.parametrize("message, tag, present", RULE_CASES, ids=[c[0][:40] for c in RULE_CASES])
def test_classification_rules_see_the_message_not_the_header(message, tag, present):
    verdict = RuleSet.load().classify(Event(source="log", message=message, service="api"))
    assert (tag in verdict.tags) is present, verdict


# ---- a tag alone is never a root cause -------------------------------------------------------

def test_a_tag_alone_is_never_the_root_cause():
    result = diagnostician.diagnose(incident(tags=["api"]), diagnostician.DiagnosticianContext())
    assert result.root_cause.endswith("cause not yet known") and not result.established
    assert [a["cause"] for a in result.alternatives] == ["an upstream API is failing"]
    assert "a tag alone is not a root cause" in result.alternatives[0]["basis"][0]


def test_a_signature_in_the_header_is_not_a_cause():
    window = logwindow.LogWindow("/l.log", [logwindow.LogLine("timeout-svc[4]: ERROR checkout failed", True)],
                                 "message")
    result = diagnostician.diagnose(incident(), diagnostician.DiagnosticianContext(log=window))
    assert not result.established, result.root_cause


# ---- the window is bounded by time around the first occurrence -------------------------------

def write(path: Path, lines: list[tuple[float | None, str]]) -> str:
    path.write_text("\n".join(text if t is None else f"{stamp(t)} {text}" for t, text in lines) + "\n")
    return str(path)


EVENT = "api[812]: ERROR checkout failed for order 17"

WINDOW_CASES = [
    # (name, lines (seconds from T0, text), expected cause substring or None for unknown, bounded_by)
    ("a disk-full line 16 s older is outside the window: cause not yet known",
     [(-16, "api[812]: ERROR write failed: No space left on device")]
     + [(-15 + i, f"api[812]: INFO request {i} served") for i in range(8)]
     + [(0, EVENT), (1, "api[812]: INFO retrying")], None, "time"),
    ("a disk-full line 3 s older is in it",
     [(-3, "api[812]: ERROR write failed: No space left on device"), (0, EVENT)], "the disk is full", "time"),
    ("a line 8 s after is outside (5 s after)",
     [(0, EVENT), (8, "api[812]: ERROR out of memory")], None, "time"),
    ("a traceback's frames take the time of its first line",
     [(-2, "api[812]: ERROR Traceback (most recent call last):"), (None, "  OSError: [Errno 28] No space left on device"),
      (0, EVENT)], "the disk is full", "time"),
]


@pytest.mark.parametrize("name, lines, cause, bounded", WINDOW_CASES, ids=[c[0] for c in WINDOW_CASES])
def test_signatures_count_only_inside_the_time_window(tmp_path, name, lines, cause, bounded):
    path = write(tmp_path / "api.log", lines)
    window = logwindow.read_window(path, message="ERROR checkout failed for order 17", at=T0, cfg=CFG,
                                   roots=[str(tmp_path)])
    assert window.bounded_by == bounded and window.found_by == "message"
    result = diagnostician.diagnose(incident(), diagnostician.DiagnosticianContext(log=window))
    if cause is None:
        assert not result.established and "cause not yet known" in result.root_cause, result.root_cause
    else:
        assert cause in result.root_cause
    assert any("around the event's first occurrence" in e and "stamped" in e for e in result.evidence)


def test_without_timestamps_the_window_falls_back_to_position_and_says_so(tmp_path):
    path = tmp_path / "plain.log"
    path.write_text("INFO start\nERROR write failed: No space left on device\n" + EVENT + "\n")
    window = logwindow.read_window(str(path), message=EVENT, at=T0, cfg=CFG, roots=[str(tmp_path)])
    assert window.bounded_by == "position" and len(window.lines) == 3
    result = diagnostician.diagnose(incident(), diagnostician.DiagnosticianContext(log=window))
    assert any("by position (the lines carry no timestamps" in e for e in result.evidence)


def test_the_event_line_is_the_occurrence_nearest_the_first_one(tmp_path):
    lines = [(-300, EVENT), (-299, "api[812]: ERROR write failed: No space left on device"),
             (0, EVENT), (200, EVENT)]
    path = write(tmp_path / "api.log", lines)
    window = logwindow.read_window(path, message="ERROR checkout failed for order 17", at=T0, cfg=CFG,
                                   roots=[str(tmp_path)])
    assert [line.text for line in window.lines] == [f"{stamp(0)} {EVENT}"]
    assert window.left_out and "stamped outside" in window.left_out[0]


def test_lines_of_other_incidents_are_left_out_but_never_the_event_line():
    window = logwindow.LogWindow("/l.log", [logwindow.LogLine("ERROR write failed: No space left on device"),
                                            logwindow.LogLine(EVENT, True), logwindow.LogLine("INFO ok")],
                                 "message", bounded_by="time", start=stamp(-10), end=stamp(5))
    kept = logwindow.without_lines_of(window, {0: "INC-20261201225959-00000001", 1: "INC-x"})
    assert [line.text for line in kept.lines] == [EVENT, "INFO ok"]
    result = diagnostician.diagnose(incident(), diagnostician.DiagnosticianContext(log=kept))
    assert not result.established
    assert any("belong to other incidents" in e and "INC-20261201225959-00000001" in e for e in result.evidence)
    assert logwindow.without_lines_of(window, {}) is window
