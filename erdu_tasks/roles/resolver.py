"""The resolver: closes the incident with a summary, impact, lessons and follow-ups."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from erdu_tasks.durations import human_duration, seconds_between
from erdu_tasks.model import Incident
from erdu_tasks.roles.diagnostician import PatternHistory


@dataclass(frozen=True)
class ResolverContext:
    """Facts the resolver needs beyond the incident."""

    now: datetime
    user_facing: list[str] = field(default_factory=list)
    user_facing_dependants: list[str] = field(default_factory=list)
    dependants: list[str] = field(default_factory=list)
    pattern: PatternHistory = field(default_factory=PatternHistory)
    runbook_attempts: int = 0                 # the runbook used, on this fingerprint (this run included)
    runbook_successes: int = 0
    known_root_cause: str | None = None       # from an earlier incident, for a pattern that skipped diagnosis
    known_root_cause_from: str | None = None
    related: list[dict[str, Any]] = field(default_factory=list)
    min_samples: int = 5


@dataclass(frozen=True)
class Resolution:
    """What the report says beyond the facts on the incident."""

    summary: str
    impact: dict[str, str]
    lessons_learned: list[str]
    follow_ups: list[str]
    root_cause: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


def _human(seconds: float | None) -> str:
    return human_duration(seconds, unknown="unknown time")


FYI_SEVERITIES = ("P1",)
"""Severities whose close without a real repair is told to the policy's first level as an FYI."""


def real_repair(incident: Incident) -> bool:
    """True when an action that changes something (not a noop, not a dry run) ran and succeeded."""
    fix = incident.fix or {}
    if fix.get("dry_run"):
        return False
    entries = fix.get("actions") or incident.resolution_actions or []
    return any(isinstance(e, dict) and e.get("ok") is True and e.get("action") not in (None, "noop")
               for e in entries)


def fyi_reason(incident: Incident, *, notified: bool) -> str | None:
    """Why people should hear of this close although nobody was paged, or None.

    A P1 closed without a real repair (its runbook only verified, or its source stopped reporting it) may
    come back or hide a cause nobody looked at: the policy's first level gets an FYI. Not when a person
    resolved it, nor when people were already notified (they get the resolve notice)."""
    if incident.severity.value not in FYI_SEVERITIES or notified:
        return None
    if (incident.resolved_by or "").startswith("person:") or real_repair(incident):
        return None
    fix = incident.fix or {}
    if fix.get("runbook") and fix.get("not_needed"):
        how = f"runbook {fix['runbook']} found it already passing its check (nothing ran)"
    elif fix.get("runbook"):
        how = f"runbook {fix['runbook']} only verified (no repair action ran)"
    else:
        how = f"it was resolved by {incident.resolved_by or 'its source'} with no action"
    return (f"FYI: {incident.severity.value} closed without a real repair: {how}; nobody was paged. "
            "It may come back, and its cause was not repaired.")


def resolve(incident: Incident, ctx: ResolverContext) -> Resolution:
    """Summarise how the incident went and what to learn from it."""
    fix = incident.fix or {}
    runbook = fix.get("runbook") if fix.get("validation", {}).get("ok") else None
    person = incident.resolved_by if (incident.resolved_by or "").startswith("person:") else None
    duration = seconds_between(incident.created_at, incident.resolved_at)
    if person:
        how = f"resolved by {person.split(':', 1)[1]}"
    elif runbook:
        how = (f"{'auto-resolved' if incident.auto_resolved else 'fixed automatically'} by runbook {runbook} "
               f"and validated ({fix.get('validation', {}).get('detail', 're-check')})")
    else:
        how = f"resolved by {incident.resolved_by or 'its source'}"
    root_cause = incident.root_cause
    if not root_cause and ctx.known_root_cause:
        root_cause = ctx.known_root_cause
    summary = (f"{incident.severity.value} incident '{incident.title}' on {incident.service or 'an unknown service'} "
               f"({incident.occurrences} occurrence(s)) was {how} {_human(duration)} after detection."
               + (f" Root cause: {root_cause}" if root_cause else ""))

    users = ctx.user_facing or ctx.user_facing_dependants
    impact = _impact(incident, ctx, _human(duration))

    lessons: list[str] = []
    follow_ups: list[str] = []
    if runbook:
        rate = (f" ({ctx.runbook_successes}/{ctx.runbook_attempts} successes on this pattern)"
                if ctx.runbook_attempts else "")
        lessons.append(f"runbook {runbook} repairs '{incident.template or incident.title}'{rate}")
    if incident.auto_resolved and runbook:
        lessons.append("known pattern: resolved without diagnosis by its proven fix, still validated")
        if ctx.known_root_cause_from:
            lessons.append(f"root cause taken from earlier incident {ctx.known_root_cause_from}")
    if fix.get("validation") and not fix["validation"].get("ok"):
        lessons.append(f"runbook {fix.get('runbook')} ran but did not fix it: {fix['validation'].get('detail')}")
        follow_ups.append(f"review runbook {fix.get('runbook')}: its validation failed on {incident.id}")
    if person:
        lessons.append("a person resolved it: capture what they did as a runbook")
        if not runbook:
            follow_ups.append(f"write a runbook from how {person.split(':', 1)[1]} fixed '{incident.title}'")
    for gap in (incident.diagnosis or {}).get("skill_gaps") or []:
        follow_ups.append(f"write a runbook: {gap}")
    if "flapping" in incident.tags or incident.reopened_from:
        lessons.append("it recurred shortly after an earlier incident of the same pattern was resolved")
    if ctx.pattern.incidents >= 3:
        follow_ups.append(f"recurring pattern ({ctx.pattern.incidents} incidents): fix the cause, not the symptom")
    if incident.occurrences > 100:
        follow_ups.append(f"reduce noise: {incident.occurrences} occurrences of one error")
    if users and not runbook:
        follow_ups.append(f"add a health check or runbook that protects {', '.join(users)}")
    if not lessons:
        lessons.append("no automated fix applied; capture what the responder did as a runbook")
    return Resolution(summary, impact, lessons, list(dict.fromkeys(follow_ups)), root_cause)


def _impact(incident: Incident, ctx: ResolverContext, how_long: str) -> dict[str, str]:
    users = ctx.user_facing or ctx.user_facing_dependants
    affected = incident.affected_services or ([incident.service] if incident.service else [])
    return {
        "business": (f"user-facing service(s) {', '.join(users)} degraded for {how_long}" if users
                     else "no user-facing service recorded as affected"),
        "technical": (f"affected: {', '.join(affected) or 'unknown'}"
                      + (f"; dependants at risk: {', '.join(ctx.dependants[:8])}" if ctx.dependants else "")
                      + f"; {incident.occurrences} error occurrence(s)"),
        "user": (f"users of {', '.join(users)} may have seen errors or slowness for {how_long}" if users
                 else "none known"),
    }


def so_far(incident: Incident, ctx: ResolverContext, *, reason: str | None = None) -> Resolution:
    """What we know so far about an incident handed to people and not yet resolved (the interim report).

    Says why people have it, where it stands, what was tried and what is owed; the cause only when a stage
    established it ("not yet known" beats a guess). The resolver's `resolve` writes the final one at close."""
    fix = incident.fix or {}
    diagnosis = incident.diagnosis or {}
    root_cause = incident.root_cause or (diagnosis.get("root_cause") if diagnosis.get("established", True)
                                         else None)
    since = _human(seconds_between(incident.created_at, ctx.now))
    acked_by = [t.actor for t in incident.timeline if t.to_status == "acknowledged"]
    ack = (f"acknowledged by {acked_by[-1].removeprefix('person:')}" if acked_by
           else "acknowledged" if incident.acknowledged_at else "not yet acknowledged")
    summary = (f"What we know so far: {incident.severity.value} incident '{incident.title}' on "
               f"{incident.service or 'an unknown service'} ({incident.occurrences} occurrence(s)), detected {since}"
               f" ago, is {incident.status.value} and {ack}."
               + (f" Escalated because: {reason}." if reason else "")
               + (f" Root cause: {root_cause}." if root_cause else " Root cause: not yet known."))
    lessons: list[str] = []
    follow_ups: list[str] = []
    if fix.get("runbook"):
        held = fix.get("validation") or {}
        outcome = ("its validation passed" if held.get("ok") else
                   f"its validation failed: {held.get('detail')}" if held else "not validated")
        lessons.append(f"runbook {fix['runbook']} was tried; {outcome}")
    else:
        lessons.append("no automated fix was applied")
    if not incident.acknowledged_at:
        follow_ups.append(f"acknowledge it: erdu incidents ack {incident.id}")
    for gap in diagnosis.get("skill_gaps") or []:
        follow_ups.append(f"write a runbook: {gap}")
    follow_ups.append(f"resolve it when fixed: erdu incidents resolve {incident.id} --note 'what was done'")
    return Resolution(summary, _impact(incident, ctx, f"{since} so far"), lessons,
                      list(dict.fromkeys(follow_ups)), root_cause)
