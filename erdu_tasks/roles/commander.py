"""The commander: adjusts severity with stated reasons and decides automate, auto-fix or escalate now.

The `commander` settings section (its keys and defaults: erdu_tasks/settings/roles.py).

Auto-resolution (the thresholds live in the `learning` section): a runbook qualifies when, on
this fingerprint, it succeeded in at least `auto_resolve_min_success` of at least
`auto_resolve_min_samples` validated attempts AND its latest attempt succeeded AND it remedies
something: a runbook that only verifies (every action a noop) never qualifies, however often the
error went away by itself. So one failure drops the pattern back to the full path (diagnosis first)
until a fix on the full path succeeds again, whatever the long-run rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from erdu_tasks.model import Incident, Severity
from erdu_tasks.settings.roles import BusinessHours, CommanderConfig  # noqa: F401 - the section models, re-exported



class Decision(StrEnum):
    """What happens after the assessment."""

    AUTOMATE = "automate"          # full path: diagnose, fix, resolve
    AUTO_FIX = "auto_fix"          # known pattern: straight to its proven fix
    ESCALATE = "escalate"          # people now


class Effect(StrEnum):
    """What one factor did to the assessment."""

    RAISE = "raise"
    LOWER = "lower"
    NOTE = "note"


@dataclass(frozen=True)
class RunbookRecord:
    """A runbook that matches the incident and how it has done on this fingerprint."""

    name: str
    attempts: int = 0
    successes: int = 0
    last_outcome: str | None = None      # "success" | "failure" | None (never tried)
    remedial: bool = True                # False: it only verifies (noop actions); never auto-resolution

    @property
    def success_rate(self) -> float:
        """Successes over attempts; 0 with no attempts."""
        return self.successes / self.attempts if self.attempts else 0.0

    def rate(self, min_samples: int) -> float | None:
        """The success rate, or None below the sample minimum (too few attempts to say)."""
        return self.success_rate if self.attempts >= min_samples else None

    @property
    def smoothed_rate(self) -> float:
        """(successes + 1) / (attempts + 2): ranks 1/1 below 45/50 and an untried runbook at 0.5."""
        return (self.successes + 1) / (self.attempts + 2)


@dataclass(frozen=True)
class CommanderContext:
    """The facts the commander weighs, gathered by the task from Postgres and configuration."""

    now: datetime
    config: CommanderConfig = field(default_factory=CommanderConfig)
    open_incidents: int = 0                  # other incidents open now
    user_facing: list[str] = field(default_factory=list)             # affected services users see
    dependants: list[str] = field(default_factory=list)              # services depending on the affected
    user_facing_dependants: list[str] = field(default_factory=list)  # ... that users see
    recent_recurrences: int = 0              # earlier incidents of this fingerprint in the flap window
    runbooks: list[RunbookRecord] = field(default_factory=list)      # matching, engine order
    auto_min_success: float = 0.9
    auto_min_samples: int = 5


@dataclass(frozen=True)
class Factor:
    """One reason the assessment is what it is."""

    name: str
    effect: Effect
    detail: str
    severity: Severity | None = None    # the severity after this factor


@dataclass(frozen=True)
class Assessment:
    """The commander's structured decision, stored on the incident."""

    severity: Severity
    original_severity: Severity
    decision: Decision
    reasons: list[str]
    runbook: str | None = None
    factors: list[Factor] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    advice: dict[str, Any] | None = None    # what an advising brain said, and what the rules bounded

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return _plain(asdict(self))


def business_hours(ctx: CommanderContext) -> bool | None:
    """True/False inside/outside the configured calendar; None when none is configured."""
    calendar = ctx.config.business_hours
    return None if calendar is None else calendar.contains(ctx.now)


def proven_runbook(runbooks: list[RunbookRecord], min_success: float, min_samples: int) -> RunbookRecord | None:
    """The runbook that meets the auto-resolution bar (rate, sample size, latest attempt a success)."""
    proven = [r for r in runbooks if r.remedial
              and r.attempts >= min_samples and r.success_rate >= min_success and r.last_outcome == "success"]
    return max(proven, key=lambda r: (r.success_rate, r.attempts), default=None)


def best_proven_runbook(ctx: CommanderContext) -> RunbookRecord | None:
    """The matching runbook that meets the auto-resolution bar, best first."""
    return proven_runbook(ctx.runbooks, ctx.auto_min_success, ctx.auto_min_samples)


def auto_resolution_status(runbooks: list[RunbookRecord], min_success: float, min_samples: int) -> str:
    """Whether the next incident of the pattern would be auto-resolved, and why (for reports)."""
    proven = proven_runbook(runbooks, min_success, min_samples)
    if proven is not None:
        return (f"yes, via {proven.name} ({proven.successes}/{proven.attempts} validated successes, "
                "the latest included)")
    tried = [r for r in runbooks if r.attempts]
    if not tried:
        return "no: no fix has run on this pattern yet"
    if not any(r.remedial for r in tried):
        names = ", ".join(r.name for r in tried)
        return f"no: {names} only verif{'ies' if len(tried) == 1 else 'y'} (noop actions); verifying never earns " \
               "auto-resolution"
    tried = [r for r in tried if r.remedial]
    best = max(tried, key=lambda r: (r.success_rate, r.attempts))
    why = []
    if best.attempts < min_samples:
        why.append(f"{best.attempts} of the {min_samples} attempts needed")
    if best.success_rate < min_success:
        why.append(f"success rate {best.success_rate:.0%} is under {min_success:.0%}")
    if best.last_outcome != "success":
        why.append("its latest attempt failed")
    return f"no: best runbook {best.name} ({best.successes}/{best.attempts}): " + "; ".join(why)


def known_bad(record: RunbookRecord, ctx: CommanderContext) -> bool:
    """A runbook that has failed this pattern too often to count as help."""
    rate = record.rate(ctx.auto_min_samples)
    return rate is not None and rate < ctx.config.known_bad_rate


def occurrence_rate(incident: Incident, now: datetime) -> float:
    """Occurrences per minute since the incident opened (at least one minute of age)."""
    if incident.created_at is None:
        return float(incident.occurrences)
    minutes = max(1.0, (now - incident.created_at).total_seconds() / 60.0)
    return incident.occurrences / minutes


def assess(incident: Incident, ctx: CommanderContext) -> Assessment:
    """Weigh blast radius, hours, load, flapping and rate; decide the path."""
    cfg = ctx.config
    severity = incident.severity
    factors = [Factor("classification", Effect.NOTE, f"classified {severity.value}", severity)]

    def move(name: str, effect: Effect, detail: str) -> None:
        nonlocal severity
        before = severity
        if effect is Effect.RAISE:
            severity = severity.raised()
        elif effect is Effect.LOWER:
            severity = severity.lowered()
        if severity is before and effect is not Effect.NOTE:
            effect, detail = Effect.NOTE, f"{detail} (already {severity.value})"
        factors.append(Factor(name, effect, detail, severity))

    affected = list(dict.fromkeys(incident.affected_services or ([incident.service] if incident.service else [])))
    if len(affected) >= cfg.blast_radius_services:
        move("blast_radius", Effect.RAISE, f"blast radius: {len(affected)} services affected ({', '.join(affected[:6])})")
    users = ctx.user_facing or ctx.user_facing_dependants
    if users and cfg.raise_user_facing:
        how = ("user-facing service affected: " + ", ".join(ctx.user_facing) if ctx.user_facing
               else "user-facing services depend on it: " + ", ".join(ctx.user_facing_dependants[:6]))
        move("user_facing", Effect.RAISE, how)
    if len(ctx.dependants) >= cfg.blast_radius_dependants:
        move("dependants", Effect.RAISE,
             f"{len(ctx.dependants)} services depend on it: {', '.join(ctx.dependants[:6])}")
    if ctx.recent_recurrences >= cfg.flapping_recurrences:
        move("flapping", Effect.RAISE, f"flapping: {ctx.recent_recurrences} earlier incident(s) of this pattern "
                                       "in the flap window")
    elif ctx.recent_recurrences or incident.reopened_from:
        move("flapping", Effect.NOTE, f"recurred: {max(ctx.recent_recurrences, 1)} earlier incident(s) of this "
                                      "pattern in the flap window")
    rate = occurrence_rate(incident, ctx.now)
    if rate >= cfg.storm_rate_per_min:
        move("occurrence_rate", Effect.RAISE, f"occurrence rate {rate:.0f}/min (storm threshold "
                                              f"{cfg.storm_rate_per_min:g}/min)")
    if ctx.open_incidents >= cfg.busy_open_incidents:
        if severity.rank >= 3:
            move("open_incidents", Effect.RAISE, f"{ctx.open_incidents} other incidents open: possibly a wider outage")
        else:
            move("open_incidents", Effect.NOTE, f"{ctx.open_incidents} other incidents open: responders are busy")
    hours = business_hours(ctx)
    if hours is False:
        if severity in cfg.lower_outside_hours and not users:
            move("business_hours", Effect.LOWER, "outside business hours and no user-facing service hit")
        else:
            move("business_hours", Effect.NOTE, "outside business hours")
    elif hours is True:
        move("business_hours", Effect.NOTE, "within business hours")

    facts = {
        "affected_services": affected, "user_facing": ctx.user_facing, "dependants": ctx.dependants,
        "user_facing_dependants": ctx.user_facing_dependants, "open_incidents": ctx.open_incidents,
        "recent_recurrences": ctx.recent_recurrences, "occurrence_rate_per_min": round(rate, 2),
        "business_hours": hours, "assessed_at": ctx.now.isoformat(),
        "runbooks": [{"name": r.name, "attempts": r.attempts, "successes": r.successes,
                      "success_rate": r.rate(ctx.auto_min_samples), "last_outcome": r.last_outcome}
                     for r in ctx.runbooks],
    }
    reasons = [f.detail for f in factors]

    def decide(decision: Decision, why: str, runbook: str | None = None) -> Assessment:
        return Assessment(severity, incident.severity, decision, [*reasons, why], runbook, factors, facts)

    proven = best_proven_runbook(ctx)
    if proven is not None:
        return decide(Decision.AUTO_FIX, f"runbook {proven.name} fixed this pattern {proven.successes}/"
                                         f"{proven.attempts} times, the latest included: auto-resolution", proven.name)
    reach = [r for r in ctx.runbooks if not known_bad(r, ctx)]
    if severity in cfg.escalate_uncovered and not reach:
        what = "no runbook covers it" if not ctx.runbooks else "every matching runbook has failed this pattern"
        return decide(Decision.ESCALATE, f"{severity.value} and {what}: escalate to people now")
    if not reach:
        return decide(Decision.AUTOMATE, "automate: diagnose (no runbook can help yet)")
    best = max(reach, key=lambda r: r.smoothed_rate) if any(r.attempts for r in reach) else reach[0]
    return decide(Decision.AUTOMATE, f"automate: diagnose, then fix with {best.name}", best.name)


# ---- advice: another brain proposes, the rules bound ----------------------------------------

HUMAN_INVOLVEMENT = {Decision.AUTO_FIX: 0, Decision.AUTOMATE: 1, Decision.ESCALATE: 2}
"""How much a decision puts people in the loop; advice may only keep it or raise it."""

PROTECTED = frozenset({Severity.P1, Severity.P2})
"""Patterns the rules call this severe are never made less urgent by advice."""

ADVICE_PREFIX = "model's advice: "


@dataclass(frozen=True)
class Advice:
    """What an advising brain (a model) proposes; its text already made plain by the brain."""

    severity: Severity
    decision: Decision
    reasons: Sequence[str]
    runbook: str | None = None


def stated_factors(reasons: Sequence[str]) -> int:
    """How many distinct factors the advice states: a reason said twice (or only in other case/spacing) counts once."""
    return len({" ".join(r.split()).casefold() for r in reasons if r and r.strip()})


def bounded_severity(rules: Severity, classified: Severity, advised: Severity, factors: int) -> Severity:
    """The advised severity, moved from the rules' at most one step per stated factor; never less urgent than the
    rules' for a pattern the rules (or its classification) call P1/P2."""
    delta = advised.rank - rules.rank          # > 0: less urgent
    steps = min(abs(delta), max(factors, 0))
    if delta > 0:
        return rules if (rules in PROTECTED or classified in PROTECTED) else rules.lowered(steps)
    return rules.raised(steps)


def bound_advice(rules: Assessment, advice: Advice, ctx: CommanderContext) -> Assessment:
    """The ONE place where a brain's advice meets the rules' assessment; the rules bound every field.

    - severity: at most one step per stated factor from the rules' severity, never lowered for P1/P2 patterns;
    - decision: only towards more human involvement (auto_fix < automate < escalate): an escalation stays one;
      and a severity the rules escalate when no runbook can help is escalated, whoever raised it;
    - runbook: auto_fix only with the runbook the rules proved; otherwise only a matching runbook that has not
      failed this pattern too often;
    - reasons: kept, each marked as the model's advice, after the rules' own; the last reason (the one
      notifications quote) is always ERDU's.
    """
    notes: list[str] = []
    factors = stated_factors(advice.reasons)
    severity = bounded_severity(rules.severity, rules.original_severity, advice.severity, factors)
    if severity is not advice.severity:
        if advice.severity.rank > rules.severity.rank and (
                rules.severity in PROTECTED or rules.original_severity in PROTECTED):
            notes.append(f"severity {advice.severity.value} refused: the rules call this pattern "
                         f"{min(rules.severity, rules.original_severity, key=lambda s: s.rank).value}, "
                         f"it stays {severity.value}")
        else:
            notes.append(f"severity {advice.severity.value} refused: {factors} stated factor(s) allow "
                         f"{factors} step(s) from the rules' {rules.severity.value}, so {severity.value}")

    decision = advice.decision
    if HUMAN_INVOLVEMENT[decision] < HUMAN_INVOLVEMENT[rules.decision]:
        notes.append(f"decision {decision.value} refused: the rules decided {rules.decision.value}, and advice "
                     "may only add human involvement")
        decision = rules.decision
    if decision is Decision.AUTO_FIX and advice.runbook not in (None, rules.runbook):
        notes.append(f"runbook {advice.runbook} refused: auto_fix runs only the runbook the rules proved "
                     f"({rules.runbook})")
    reach = [r for r in ctx.runbooks if not known_bad(r, ctx)]
    if decision is not Decision.ESCALATE and severity in ctx.config.escalate_uncovered and not reach \
            and decision is not Decision.AUTO_FIX:
        notes.append(f"{severity.value} and no runbook can help: escalate, as the rules do at {severity.value}")
        decision = Decision.ESCALATE

    runbook: str | None
    if decision is Decision.ESCALATE:
        runbook = None
    elif decision is Decision.AUTO_FIX:
        runbook = rules.runbook
    elif advice.runbook is None:
        runbook = rules.runbook
    elif advice.runbook in {r.name for r in reach}:
        runbook = advice.runbook
    else:
        notes.append(f"runbook {advice.runbook} refused: not a matching runbook that can help "
                     f"(matching: {', '.join(r.name for r in reach) or 'none'})")
        runbook = rules.runbook

    if decision is rules.decision and severity is rules.severity and runbook == rules.runbook:
        final = rules.reasons[-1] if rules.reasons else f"{decision.value}: the rules' decision"
    elif decision is Decision.ESCALATE and rules.decision is Decision.ESCALATE:
        final = rules.reasons[-1] if rules.reasons else "escalate to people now"
    elif decision is Decision.ESCALATE:
        final = (f"{severity.value}: escalate to people now (the model's advice, within the rules' bounds; "
                 f"the rules alone would {rules.decision.value})")
    elif decision is Decision.AUTO_FIX:
        final = f"{severity.value}: auto-resolution via {runbook} (the rules' proven runbook)"
    else:
        final = (f"{severity.value}: automate: diagnose" + (f", then fix with {runbook}" if runbook else "")
                 + " (the model's advice, within the rules' bounds)")

    effect = (Effect.RAISE if severity.rank < rules.severity.rank
              else Effect.LOWER if severity.rank > rules.severity.rank else Effect.NOTE)
    factor = Factor("model_advice", effect, f"the model advised {advice.severity.value} and {advice.decision.value}"
                    f" on {factors} stated factor(s)", severity)
    advised = [ADVICE_PREFIX + r for r in advice.reasons]
    bounded = [f"bounded by the rules: {n}" for n in notes]
    return Assessment(
        severity=severity, original_severity=rules.original_severity, decision=decision,
        reasons=[*rules.reasons[:-1], *advised, *bounded, final], runbook=runbook,
        factors=[*rules.factors, factor], facts=rules.facts,
        advice={"severity": advice.severity.value, "decision": advice.decision.value, "runbook": advice.runbook,
                "reasons": list(advice.reasons), "stated_factors": factors, "bounded": notes,
                "rules": {"severity": rules.severity.value, "decision": rules.decision.value,
                          "runbook": rules.runbook}},
    )


def _plain(value: Any) -> Any:
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
