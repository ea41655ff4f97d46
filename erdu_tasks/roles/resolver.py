"""The resolver: closes the incident with a summary, impact, lessons and follow-ups."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from ..model import Incident


@dataclass(frozen=True)
class ResolverContext:
    """Facts the resolver needs beyond the incident."""

    now: datetime
    user_facing: list[str] = field(default_factory=list)
    pattern_incidents: int = 0
    runbook_success_rate: float | None = None


@dataclass(frozen=True)
class Resolution:
    """What the report says beyond the facts on the incident."""

    summary: str
    impact: dict[str, str]
    lessons_learned: list[str]
    follow_ups: list[str]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def resolve(incident: Incident, ctx: ResolverContext) -> Resolution:
    """Summarise how the incident went and what to learn from it."""
    fix = incident.fix or {}
    runbook = fix.get("runbook")
    how = (f"fixed automatically by runbook {runbook}, validated by {fix.get('validation', {}).get('detail', 're-check')}"
           if runbook else f"resolved by {incident.resolved_by or 'a person'}")
    duration = ""
    if incident.created_at and incident.resolved_at:
        duration = f" in {(incident.resolved_at - incident.created_at).total_seconds():.1f} s"
    summary = (f"{incident.severity.value} incident '{incident.title}' on "
               f"{incident.service or 'an unknown service'} ({incident.occurrences} occurrence(s)) was {how}{duration}.")
    impact = {
        "business": ("users were affected: " + ", ".join(ctx.user_facing)) if ctx.user_facing
        else "no user-facing service recorded as affected",
        "technical": f"affected: {', '.join(incident.affected_services) or incident.service or 'unknown'}; "
                     f"root cause: {incident.root_cause or 'not established'}",
        "user": "degraded service while the incident was open" if ctx.user_facing else "none known",
    }
    lessons: list[str] = []
    follow_ups: list[str] = []
    if runbook:
        lessons.append(f"runbook {runbook} repairs '{incident.template or incident.title}'")
    if incident.auto_resolved:
        lessons.append("known pattern: resolved without diagnosis from its learned fix")
    gaps = (incident.diagnosis or {}).get("skill_gaps") or []
    for gap in gaps:
        follow_ups.append(f"write a runbook: {gap}")
    if incident.occurrences > 100:
        follow_ups.append(f"reduce noise: {incident.occurrences} occurrences of one error")
    if ctx.pattern_incidents > 3:
        follow_ups.append(f"recurring pattern ({ctx.pattern_incidents} incidents): fix the cause, not the symptom")
    if "flapping" in incident.tags:
        lessons.append("this incident recurred shortly after an earlier one was resolved")
    if not lessons:
        lessons.append("no automated fix applied; capture what the responder did as a runbook")
    return Resolution(summary, impact, lessons, follow_ups)
