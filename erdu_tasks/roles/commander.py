"""The commander: adjusts severity with stated reasons and decides automate, auto-fix or escalate now."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from ..model import Incident, Severity


class Decision(StrEnum):
    """What happens after the assessment."""

    AUTOMATE = "automate"          # full path: diagnose, fix, resolve
    AUTO_FIX = "auto_fix"          # known pattern: straight to its proven fix
    ESCALATE = "escalate"          # people now


@dataclass(frozen=True)
class RunbookRecord:
    """A runbook that matches the incident and how it has done on this fingerprint."""

    name: str
    attempts: int = 0
    successes: int = 0

    @property
    def success_rate(self) -> float:
        """Successes over attempts; 0 with no attempts."""
        return self.successes / self.attempts if self.attempts else 0.0


@dataclass(frozen=True)
class CommanderContext:
    """The facts the commander weighs, gathered by the task from Postgres and configuration."""

    now: datetime
    open_incidents: int = 0
    user_facing: list[str] = field(default_factory=list)
    dependants: list[str] = field(default_factory=list)
    recent_recurrences: int = 0
    runbooks: list[RunbookRecord] = field(default_factory=list)
    business_hours: bool | None = None   # None: no calendar configured
    auto_min_success: float = 0.9
    auto_min_samples: int = 5
    busy_threshold: int = 10
    storm_rate_per_min: float = 100.0


@dataclass(frozen=True)
class Assessment:
    """The commander's structured decision, stored on the incident."""

    severity: Severity
    original_severity: Severity
    decision: Decision
    reasons: list[str]
    runbook: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {k: (v.value if isinstance(v, StrEnum) else v) for k, v in asdict(self).items()}


def best_proven_runbook(ctx: CommanderContext) -> RunbookRecord | None:
    """The runbook that meets the auto-resolution bar (rate and sample size), best first."""
    proven = [r for r in ctx.runbooks
              if r.attempts >= ctx.auto_min_samples and r.success_rate >= ctx.auto_min_success]
    return max(proven, key=lambda r: (r.success_rate, r.attempts), default=None)


def assess(incident: Incident, ctx: CommanderContext) -> Assessment:
    """Weigh blast radius, hours, load, flapping and rate; decide the path."""
    severity = incident.severity
    reasons: list[str] = [f"initial severity {severity.value} from classification"]
    affected = incident.affected_services
    if len(affected) >= 3:
        severity = severity.raised()
        reasons.append(f"blast radius: {len(affected)} services affected")
    if ctx.user_facing:
        severity = severity.raised()
        reasons.append(f"user-facing service affected: {', '.join(ctx.user_facing)}")
    if len(ctx.dependants) >= 2:
        severity = severity.raised()
        reasons.append(f"{len(ctx.dependants)} services depend on it: {', '.join(ctx.dependants[:5])}")
    if ctx.recent_recurrences >= 2 or incident.reopened_from:
        reasons.append(f"flapping: recurred {max(ctx.recent_recurrences, 1)} time(s) recently")
        if ctx.recent_recurrences >= 3:
            severity = severity.raised()
    minutes = _age_minutes(incident, ctx.now)
    if incident.occurrences / minutes >= ctx.storm_rate_per_min:
        severity = severity.raised()
        reasons.append(f"occurrence rate {incident.occurrences / minutes:.0f}/min")
    if ctx.open_incidents >= ctx.busy_threshold:
        reasons.append(f"{ctx.open_incidents} incidents open: responders are busy")
    if ctx.business_hours is False and severity.rank >= 3 and not ctx.user_facing:
        severity = severity.lowered()
        reasons.append("outside business hours and not user-facing: lowered")
    elif ctx.business_hours is False:
        reasons.append("outside business hours")

    proven = best_proven_runbook(ctx)
    if proven is not None:
        reasons.append(f"runbook {proven.name} fixed this pattern {proven.successes}/{proven.attempts} times: "
                       "auto-resolution")
        return Assessment(severity, incident.severity, Decision.AUTO_FIX, reasons, proven.name)
    if severity is Severity.P1 and not ctx.runbooks:
        reasons.append("P1 with no runbook that covers it: escalate to people now")
        return Assessment(severity, incident.severity, Decision.ESCALATE, reasons)
    reasons.append("automate: diagnose and fix" if ctx.runbooks else "automate: diagnose (no runbook yet)")
    return Assessment(severity, incident.severity, Decision.AUTOMATE, reasons,
                      ctx.runbooks[0].name if ctx.runbooks else None)


def _age_minutes(incident: Incident, now: datetime) -> float:
    if incident.created_at is None:
        return 1.0
    return max(1.0, (now - incident.created_at).total_seconds() / 60.0)
