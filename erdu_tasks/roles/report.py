"""Incident reports: one JSON and one Markdown file per incident, named from the incident id only."""

from __future__ import annotations

import functools
import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from erdu_tasks.durations import human_duration, seconds_between
from erdu_tasks.model import Incident

_ID = re.compile(r"^INC-\d{14}-[0-9a-f]{8}$")
_MARKUP = re.compile(r"([\\`*_\[\]<>|~])")
# What makes _escape change a text: a markup character or a line break (every one str.splitlines breaks on).
_NEEDS_ESCAPE = re.compile(r"[\\`*_\[\]<>|~\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


class _Verbatim(str):
    """Text already made safe for where it stands (inside a code fence or span): not escaped again."""


def _escape(value: Any) -> Any:
    """Every value the template prints is text from an event unless marked verbatim: shown, never rendered.

    Markdown and HTML syntax (links, images, emphasis, tags, table pipes) is backslash-escaped and a
    newline cannot start a heading or a list of its own, so a title like `<img src=x onerror=…>` or
    `[click](http://…)` is shown as typed by any Markdown viewer.
    """
    if value is None or isinstance(value, (_Verbatim, bool, int, float)):
        return value
    if type(value) is str and _NEEDS_ESCAPE.search(value) is None:   # most text: nothing to escape
        return value
    text = " ".join(str(value).splitlines())
    return _MARKUP.sub(r"\\\1", text)


@functools.cache
def _environment() -> Any:
    """The report's Jinja environment, made with the first report (a worker that writes none never loads Jinja)."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    class ReportEnvironment(Environment):
        """`r.key` on the report's plain dicts reads the key first, without the failed attribute lookup Jinja
        tries first (a name no dict has as an attribute: the same answer either way)."""

        def getattr(self, obj: Any, attribute: str) -> Any:
            if type(obj) is dict and attribute not in _DICT_ATTRIBUTES:
                try:
                    return obj[attribute]
                except KeyError:
                    return self.undefined(obj=obj, name=attribute)
            return super().getattr(obj, attribute)

    env = ReportEnvironment(loader=PackageLoader("erdu_tasks", "templates"), undefined=StrictUndefined,
                      keep_trailing_newline=True, autoescape=False, trim_blocks=True, lstrip_blocks=True,
                      finalize=_escape,
                      auto_reload=False)   # the template ships with the code: no stat of it per report
    env.filters.update(cell=_cell, dur=human_duration, code=_code, rendered=_rendered)
    return env


_DICT_ATTRIBUTES = frozenset(dir(dict))


def _cell(value: Any, width: int = 200) -> str:
    """Text safe inside a Markdown table cell: one line, no pipes, bounded."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    text = " ".join(text.replace("|", "/").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _code(text: str) -> str:
    """A log line (or output) that cannot close the surrounding code fence or span; shown verbatim there."""
    return _Verbatim(" ".join(str(text).replace("`", "'").splitlines()))


def _rendered(text: str) -> str:
    """A macro's output: already escaped expression by expression, so not escaped again."""
    return _Verbatim(str(text))


def build_report(incident: Incident, resolution: dict[str, Any], *, related: list[dict[str, Any]] | None = None,
                 learning: dict[str, Any] | None = None,
                 children: list[dict[str, Any]] | None = None,
                 situation: list[dict[str, Any]] | None = None, final: bool = True) -> dict[str, Any]:
    """The report as data: facts from the incident plus the resolver's summary and what was learned.

    `final` False: the interim report of an incident still with people ("what we know so far")."""
    previous = incident.created_at
    timeline = []
    for t in incident.timeline:
        delta = (t.at - previous).total_seconds() if previous else 0.0
        previous = t.at
        timeline.append({"at": t.at.isoformat(), "actor": t.actor, "worker": t.worker,
                         "from_status": t.from_status, "to_status": t.to_status, "what": t.what,
                         "delta": max(delta, 0.0), "since_detected": seconds_between(incident.created_at, t.at),
                         "details": t.details})
    resolved_at = incident.resolved_at
    ack = incident.acknowledged_at
    fix = incident.fix or {}
    diagnosis = incident.diagnosis or {}
    root_cause = (resolution.get("root_cause") or incident.root_cause
                  or (diagnosis.get("root_cause") if diagnosis.get("established", True) else None))
    return {
        "id": incident.id,
        "final": final,
        "title": incident.title,
        "host": incident.host,
        "labels": incident.labels,
        "first_occurrence": incident.first_occurrence(FIRST_OCCURRENCE_LINES),
        "severity": incident.severity.value,
        "original_severity": (incident.assessment or {}).get("original_severity"),
        "status": incident.status.value,
        "service": incident.service,
        "source": incident.source,
        "fingerprint": incident.fingerprint,
        "template": incident.template,
        "occurrences": incident.occurrences,
        "created_at": _iso(incident.created_at),
        "acknowledged_at": _iso(ack),
        "escalated_at": _iso(incident.escalated_at),
        "resolved_at": _iso(resolved_at),
        "closed_at": _iso(incident.closed_at),
        "durations": {
            "time_to_acknowledge": seconds_between(incident.created_at, ack),
            "time_to_escalate": seconds_between(incident.created_at, incident.escalated_at),
            "time_to_resolve": seconds_between(incident.created_at, resolved_at),
        },
        "phases": phases(incident),
        "resolved_by": incident.resolved_by,
        "auto_resolved": incident.auto_resolved,
        "affected_services": incident.affected_services,
        "tags": incident.tags,
        "assessment": incident.assessment,
        "decision": (incident.assessment or {}).get("decision"),
        "assessment_reasons": (incident.assessment or {}).get("reasons", []),
        "root_cause": root_cause,
        # Which texts are a model's advice (the brain's note), so the report says so where it shows them.
        "root_cause_advice": (_advised_by(diagnosis.get("brain"))
                              if root_cause and root_cause == diagnosis.get("root_cause") else None),
        "summary_advice": _advised_by(resolution.get("brain")),
        "confidence": diagnosis.get("confidence"),
        "diagnosed": bool(diagnosis.get("evidence")),
        "evidence": diagnosis.get("evidence", []),
        "alternatives": diagnosis.get("alternatives", []),
        "log": diagnosis.get("log"),
        "skill_gaps": diagnosis.get("skill_gaps", []),
        "related": related if related is not None else diagnosis.get("related", []),
        "runbook": fix.get("runbook"),
        "actions": fix.get("actions", []),
        "rollback": fix.get("rollback", []),
        "validation": fix.get("validation"),
        "dry_run": bool(fix.get("dry_run")),
        "capture": _capture(fix.get("capture")),
        "previous_capture": _capture(fix.get("previous_capture")),
        "summary": resolution["summary"],
        "impact": resolution["impact"],
        "lessons_learned": resolution["lessons_learned"],
        "follow_ups": resolution["follow_ups"],
        "learning": learning or {},
        "parent_id": incident.parent_id,
        "children": [{k: c.get(k) for k in ("id", "status", "severity", "service", "title")}
                     for c in (children or [])],
        "situation": [{"id": c.get("id"), "status": c.get("status"), "severity": c.get("severity"),
                       "source": c.get("source"), "title": c.get("title"),
                       "created_at": _iso(c["created_at"]) if isinstance(c.get("created_at"), datetime)
                       else c.get("created_at"),
                       "apart": seconds_between(incident.created_at, c["created_at"])
                       if isinstance(c.get("created_at"), datetime) else None}
                      for c in (situation or [])],
        "timeline": timeline,
    }


FIRST_OCCURRENCE_LINES = 40
"""How many lines of the first occurrence (its message, then its traceback) a report shows."""


def _advised_by(brain: Any) -> str | None:
    """'the model X' when a model (not the rules) wrote the text; None for the rules or a fallback."""
    if not isinstance(brain, dict) or brain.get("name") in (None, "rules") or brain.get("fallback"):
        return None
    return f"the model {brain['model']}" if brain.get("model") else "the model"


def _capture(found: Any) -> dict[str, Any] | None:
    """The capture before repair, with its thread dump and log as lists of lines (each shown verbatim)."""
    if not isinstance(found, dict):
        return None
    dump = dict(found.get("thread_dump") or {})
    dump["lines"] = str(dump.get("text") or "").splitlines()[:400]
    log = dict(found.get("log") or {})
    log["lines"] = [str(line) for line in (log.get("lines") or [])][:100]
    return {**found, "thread_dump": dump, "log": log, "process": found.get("process") or None}


_PHASE = {
    "detected": "waiting for assessment",
    "assigned": "assessed, waiting for diagnosis or fix",
    "investigating": "diagnosed, waiting for the fixer",
    "fixing": "fixing and validating",
    "awaiting_approval": "waiting for a person's approval",
    "escalated": "escalated to people",
    "acknowledged": "acknowledged by a person",
    "resolved": "resolved, writing the report",
}


def phases(incident: Incident) -> list[dict[str, Any]]:
    """Time spent in each status, in order: from detection to the last status change."""
    marks: list[tuple[str, datetime, str]] = []
    if incident.created_at is not None:
        marks.append(("detected", incident.created_at, "ingest"))
    for t in incident.timeline:
        if t.to_status:
            marks.append((t.to_status, t.at, t.actor))
    out = []
    for (status, start, _), (next_status, end, actor) in zip(marks, marks[1:]):
        out.append({"status": status, "what": _PHASE.get(status, status), "started_at": start.isoformat(),
                    "seconds": max((end - start).total_seconds(), 0.0), "ended_by": actor, "next": next_status})
    return out


def render_markdown(report: dict[str, Any]) -> str:
    """The Markdown report people read."""
    return _environment().get_template("report.md.j2").render(r=report)


def report_paths(directory: Path, incident_id: str) -> tuple[Path, Path]:
    """Where <id>.json and <id>.md go; the names come from the validated incident id only."""
    if not _ID.match(incident_id):
        raise ValueError(f"refusing to name a report after {incident_id!r}")
    return directory / f"{incident_id}.json", directory / f"{incident_id}.md"


def write_report(directory: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write <id>.json and <id>.md atomically."""
    json_path, md_path = report_paths(directory, report["id"])
    directory.mkdir(parents=True, exist_ok=True)
    _atomic_write(json_path, dumps_indented(report))
    _atomic_write(md_path, render_markdown(report))
    return json_path, md_path


def remove_report(directory: Path, incident_id: str) -> None:
    """Take back what write_report wrote for the incident (either file may be missing)."""
    for path in report_paths(directory, incident_id):
        path.unlink(missing_ok=True)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def dumps_indented(value: Any) -> str:
    """The report as JSON, indented for people, anything JSON has no type for written as its str()."""
    return json.dumps(value, indent=2, default=str)

