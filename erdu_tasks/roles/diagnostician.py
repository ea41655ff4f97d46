"""The diagnostician: gathers evidence and states a root-cause hypothesis with a confidence."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..model import Incident


@dataclass(frozen=True)
class Related:
    """An earlier incident that looks like this one."""

    id: str
    title: str
    status: str
    score: float
    root_cause: str | None = None


@dataclass(frozen=True)
class DiagnosticianContext:
    """Evidence gathered by the task: related incidents, pattern history, log lines, runbook hints."""

    related: list[Related] = field(default_factory=list)
    pattern_incidents: int = 0
    pattern_resolved: int = 0
    working_fixes: list[str] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)
    runbook_hints: dict[str, str] = field(default_factory=dict)   # runbook name -> diagnosis hint


@dataclass(frozen=True)
class Diagnosis:
    """Root cause, the evidence it rests on, how sure, and what no runbook covers."""

    root_cause: str
    confidence: float
    evidence: list[str]
    related: list[dict[str, Any]]
    skill_gaps: list[str]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


_CAUSES = [
    ("database", "the database is unreachable or refusing connections"),
    ("connectivity", "a network dependency is unreachable (connection refused, reset or timed out)"),
    ("performance", "a resource is saturated: requests exceed their time budget"),
    ("api", "an upstream API is failing"),
    ("critical", "a component failed fatally"),
]


def diagnose(incident: Incident, ctx: DiagnosticianContext) -> Diagnosis:
    """Combine runbook hints, history and the event itself into a hypothesis."""
    evidence = [f"{incident.occurrences} occurrence(s) of template: {incident.template or incident.title}"]
    confidence = 0.3
    if ctx.runbook_hints:
        name, hint = next(iter(ctx.runbook_hints.items()))
        cause = hint
        evidence.append(f"runbook {name} describes this pattern")
        confidence += 0.3
    else:
        cause = next((text for tag, text in _CAUSES if tag in incident.tags),
                     f"{incident.title}: cause not yet known")
        evidence.append(f"tags: {', '.join(incident.tags) or 'none'}")
    earlier = [r for r in ctx.related if r.root_cause]
    if earlier:
        evidence.append(f"{len(earlier)} similar earlier incident(s); best match {earlier[0].id} "
                        f"(similarity {earlier[0].score:.2f}) had root cause: {earlier[0].root_cause}")
        confidence += 0.15 * min(earlier[0].score, 1.0)
    if ctx.pattern_incidents > 1:
        evidence.append(f"pattern seen in {ctx.pattern_incidents} incidents, {ctx.pattern_resolved} resolved")
        confidence += 0.1
    if ctx.working_fixes:
        evidence.append(f"fixes that worked before: {', '.join(ctx.working_fixes)}")
    if ctx.log_lines:
        evidence.append(f"{len(ctx.log_lines)} log line(s) around the event collected")
    gaps = [] if ctx.runbook_hints else [f"no runbook matches '{incident.title}' (service {incident.service or '-'})"]
    return Diagnosis(
        root_cause=cause,
        confidence=round(min(confidence, 0.95), 2),
        evidence=evidence,
        related=[asdict(r) for r in ctx.related],
        skill_gaps=gaps,
    )
