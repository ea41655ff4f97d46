"""A report shows event text as typed: a Markdown or HTML viewer renders none of it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from markdown_it import MarkdownIt

from erdu_tasks.model import Incident, Severity, Status, TimelineEntry
from erdu_tasks.roles import resolver
from erdu_tasks.roles.report import build_report, render_markdown

AT = datetime(2025, 6, 11, 10, 0, tzinfo=timezone.utc)
HOSTILE_TITLE = "<img src=x onerror=alert(1)> [click](http://evil.example) **now** | col\n# Heading"
HOSTILE_LINE = "```\n<script>alert(2)</script>"


def hostile_incident() -> Incident:
    return Incident(
        id="INC-20250611095900-0000abcd", fingerprint="fp-1", title=HOSTILE_TITLE,
        description=HOSTILE_TITLE, severity=Severity.P1, status=Status.RESOLVED, source="log",
        service="<b>shop</b>", affected_services=["[x](javascript:alert(3))"], tags=[], template=HOSTILE_TITLE,
        occurrences=1, created_at=AT, resolved_at=AT + timedelta(seconds=5),
        root_cause="![img](http://evil.example/pixel.png) the _disk_ is full",
        fix={"runbook": "reset-cache", "validation": {"ok": True, "detail": "<i>ok</i>", "duration": 0.1},
             "actions": [{"step": "1", "action": "noop", "ok": True, "detail": "[a](http://evil.example)",
                          "duration": 0.01, "output": "`<b>out</b>`", "reused": False}], "rollback": []},
        diagnosis={"log": {"path": "/var/log/app.log", "found_by": "message",
                           "lines": [{"text": HOSTILE_LINE, "event": True}]}},
        timeline=[TimelineEntry(AT + timedelta(seconds=1), "commander", "w1", "detected", "assigned",
                                "assessed <u>x</u>")])


def rendered() -> tuple[str, str]:
    incident = hostile_incident()
    resolution = resolver.resolve(incident, resolver.ResolverContext(now=AT))
    md = render_markdown(build_report(incident, resolution.as_dict()))
    return md, MarkdownIt("commonmark").enable("table").render(md)


def test_markup_from_an_event_is_shown_as_text_not_rendered():
    md, html = rendered()
    for tag in ("<img", "<script", "<b>", "<i>", "<u>", "href=\"http://evil", "href=\"javascript", "src=\"http"):
        assert tag not in html, tag
    assert "<strong>now</strong>" not in html and "<em>disk</em>" not in html
    assert html.count("<h1>") == 1   # the report's own title line only: the event's newline made no heading
    assert "&lt;img src=x onerror=alert(1)&gt;" in html   # still shown, as typed


def test_the_report_keeps_its_own_structure():
    md, html = rendered()
    assert "<table>" in html and "<h2>Summary</h2>" in html
    assert "Widget" not in md and "reset-cache" in md


def test_a_capture_before_repair_is_shown_as_text_too():
    incident = hostile_incident()
    incident.fix = {**incident.fix, "capture": {
        "before": "restart", "duration": 0.2, "found_by": "pid file /run/<b>x</b>.pid",
        "process": {"pid": 42, "name": "python3", "cmdline": "python3 `<img src=x>` | x", "status": "sleeping",
                    "cpu_percent": 1.5, "cpu_times": {"user": 0.1, "system": 0.0}, "memory_rss": 10485760,
                    "memory_percent": 0.5, "threads": 3, "open_files_count": 1, "open_files": ["/tmp/<i>f</i>"],
                    "connections_count": 1,
                    "connections": [{"local": "127.0.0.1:80", "remote": "", "status": "LISTEN"}]},
        "thread_dump": {"ok": True, "text": "Thread 42 (idle)\n    " + HOSTILE_LINE},
        "log": {"path": "/var/log/app.log", "lines": [HOSTILE_LINE, "INFO fine"]}}}
    resolution = resolver.resolve(incident, resolver.ResolverContext(now=AT))
    md = render_markdown(build_report(incident, resolution.as_dict()))
    html = MarkdownIt("commonmark").enable("table").render(md)
    for tag in ("<img", "<script", "<b>", "<i>"):
        assert tag not in html, tag
    assert "<h2>State before repair</h2>" in html and "<td>sleeping</td>" in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html   # inside the dump's code block, as typed
    assert "<h2>Actions</h2>" in html                          # no fence left open
