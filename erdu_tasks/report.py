"""Incident reports: one JSON and one Markdown file per incident, named from the incident id only."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from .model import Incident

_ID = re.compile(r"^INC-\d{14}-[0-9a-f]{8}$")
_env = Environment(loader=PackageLoader("erdu_tasks", "templates"), undefined=StrictUndefined,
                   keep_trailing_newline=True, autoescape=False)


def build_report(incident: Incident, resolution: dict[str, Any]) -> dict[str, Any]:
    """The report as data: facts from the incident plus the resolver's summary."""
    previous = incident.created_at
    timeline = []
    for t in incident.timeline:
        delta = (t.at - previous).total_seconds() if previous else 0.0
        previous = t.at
        timeline.append({"at": t.at.isoformat(), "actor": t.actor, "worker": t.worker,
                         "from_status": t.from_status, "to_status": t.to_status, "what": t.what,
                         "delta": max(delta, 0.0), "details": t.details})
    resolved_at = incident.resolved_at
    ack = incident.acknowledged_at
    fix = incident.fix or {}
    diagnosis = incident.diagnosis or {}
    return {
        "id": incident.id,
        "title": incident.title,
        "severity": incident.severity.value,
        "original_severity": (incident.assessment or {}).get("original_severity"),
        "status": incident.status.value,
        "service": incident.service,
        "source": incident.source,
        "fingerprint": incident.fingerprint,
        "occurrences": incident.occurrences,
        "created_at": _iso(incident.created_at),
        "acknowledged_at": _iso(ack),
        "resolved_at": _iso(resolved_at),
        "closed_at": _iso(incident.closed_at),
        "durations": {
            "time_to_acknowledge": _seconds(incident.created_at, ack),
            "time_to_resolve": _seconds(incident.created_at, resolved_at),
        },
        "resolved_by": incident.resolved_by,
        "auto_resolved": incident.auto_resolved,
        "affected_services": incident.affected_services,
        "tags": incident.tags,
        "assessment": incident.assessment,
        "root_cause": incident.root_cause or diagnosis.get("root_cause"),
        "confidence": diagnosis.get("confidence"),
        "evidence": diagnosis.get("evidence", []),
        "skill_gaps": diagnosis.get("skill_gaps", []),
        "related": diagnosis.get("related", []),
        "actions": fix.get("actions", []),
        "validation": fix.get("validation"),
        "summary": resolution["summary"],
        "impact": resolution["impact"],
        "lessons_learned": resolution["lessons_learned"],
        "follow_ups": resolution["follow_ups"],
        "timeline": timeline,
    }


def render_markdown(report: dict[str, Any]) -> str:
    """The Markdown report people read."""
    return _env.get_template("report.md.j2").render(r=_Attr(report))


def write_report(directory: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write <id>.json and <id>.md atomically; the names come from the validated incident id only."""
    incident_id = report["id"]
    if not _ID.match(incident_id):
        raise ValueError(f"refusing to name a report after {incident_id!r}")
    directory.mkdir(parents=True, exist_ok=True)
    json_path = directory / f"{incident_id}.json"
    md_path = directory / f"{incident_id}.md"
    _atomic_write(json_path, json.dumps(report, indent=2, default=str))
    _atomic_write(md_path, render_markdown(report))
    return json_path, md_path


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None


class _Attr(dict):
    """Dict with attribute access for templates (nested)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return _wrap(self[name])
        except KeyError:
            raise AttributeError(name) from None


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return _Attr(value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value
