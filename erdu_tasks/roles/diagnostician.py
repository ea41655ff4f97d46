"""The diagnostician: weighs the evidence and states a root-cause hypothesis, its basis and a confidence.

Hypotheses come from four independent sources, each with a base confidence:
runbook diagnosis hints (stronger when the runbook has a proven record on this pattern), root
causes of earlier similar incidents (scaled by similarity), signatures in the log lines around
the event, and the classification tags. The strongest wins; another source naming the same cause
adds to its confidence; the rest are kept as alternatives.

People are told the truth: the log lines are those of this incident's time window (roles/logwindow)
and signatures are searched in their messages, not their headers; a classification tag alone is
never a root cause (it is kept as an alternative); when nothing explains the incident, its root
cause is "cause not yet known".
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from erdu_tasks.logline import message_of
from erdu_tasks.model import Incident
from erdu_tasks.roles.logwindow import LogWindow


@dataclass(frozen=True)
class Related:
    """An earlier incident that looks like this one."""

    id: str
    title: str
    status: str
    score: float
    root_cause: str | None = None
    same_fingerprint: bool = False
    runbook: str | None = None
    resolved_by: str | None = None
    created_at: str | None = None


@dataclass(frozen=True)
class FixRecord:
    """How a runbook has done on this fingerprint; rate is None below the sample minimum."""

    runbook: str
    attempts: int
    successes: int
    rate: float | None
    last_outcome: str | None = None


@dataclass(frozen=True)
class PatternHistory:
    """The learned counters of the incident's fingerprint."""

    incidents: int = 0
    occurrences: int = 0
    resolved: int = 0
    escalated: int = 0
    auto_resolved: int = 0
    mean_time_to_resolve: float | None = None


@dataclass(frozen=True)
class DiagnosticianContext:
    """Evidence gathered by the task: related incidents, pattern history, log lines, runbook hints."""

    related: list[Related] = field(default_factory=list)
    pattern: PatternHistory = field(default_factory=PatternHistory)
    fixes: list[FixRecord] = field(default_factory=list)
    log: LogWindow | None = None
    runbook_hints: dict[str, str] = field(default_factory=dict)   # runbook name -> diagnosis hint, ranked


@dataclass(frozen=True)
class Hypothesis:
    """A possible root cause and what it rests on."""

    cause: str
    confidence: float
    basis: list[str]
    tag_only: bool = False      # only a classification tag suggests it: never the root cause


@dataclass(frozen=True)
class Diagnosis:
    """Root cause, the evidence it rests on, how sure, alternatives, and what no runbook covers."""

    root_cause: str
    confidence: float
    evidence: list[str]
    related: list[dict[str, Any]]
    skill_gaps: list[str]
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    established: bool = True          # False: no source explains it; the root cause stays unknown
    pattern: dict[str, Any] = field(default_factory=dict)
    fixes: list[dict[str, Any]] = field(default_factory=list)
    log: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


UNKNOWN = "cause not yet known"

_TAG_CAUSES = [
    ("database", "the database is unreachable or refusing connections"),
    ("connectivity", "a network dependency is unreachable (connection refused, reset or timed out)"),
    ("performance", "a resource is saturated: requests exceed their time budget"),
    ("api", "an upstream API is failing"),
    ("critical", "a component failed fatally"),
]

# Signatures that, seen in the lines around the event, point at a cause.
_LOG_SIGNATURES = [
    (re.compile(r"(?i)no space left on device|disk (is )?full|quota exceeded"), "the disk is full"),
    (re.compile(r"(?i)out ?of ?memory|OOM|cannot allocate memory|MemoryError"), "the process ran out of memory"),
    (re.compile(r"(?i)too many open files|EMFILE"), "the process ran out of file descriptors"),
    (re.compile(r"(?i)too many (clients|connections)|connection pool (exhausted|full)|remaining connection slots"),
     "the connection pool or the server's connection limit is exhausted"),
    (re.compile(r"(?i)connection refused|ECONNREFUSED"), "a dependency is down (connection refused)"),
    (re.compile(r"(?i)deadlock"), "transactions deadlocked"),
    (re.compile(r"(?i)certificate (has )?expired|x509|SSL.*(verify|handshake) fail"),
     "a TLS certificate is expired or untrusted"),
    (re.compile(r"(?i)permission denied|EACCES"), "a permission is missing"),
    (re.compile(r"(?i)timed? ?out|deadline exceeded"), "a dependency is too slow (timeouts)"),
]


def diagnose(incident: Incident, ctx: DiagnosticianContext) -> Diagnosis:
    """Combine runbook hints, history, log lines and the event itself into a ranked hypothesis."""
    candidates = _candidates(incident, ctx)
    merged: dict[str, Hypothesis] = {}
    for h in candidates:
        key = h.cause.strip().lower()
        if key in merged:   # an independent source naming the same cause corroborates it
            old = merged[key]
            strong, weak = (old, h) if old.confidence >= h.confidence else (h, old)
            merged[key] = Hypothesis(strong.cause, strong.confidence + 0.1 * weak.confidence,
                                     strong.basis + weak.basis, strong.tag_only and weak.tag_only)
        else:
            merged[key] = h
    # A tag alone is never a root cause: tag-only hypotheses rank after every other source.
    ranked = sorted(merged.values(), key=lambda h: (not h.tag_only, h.confidence), reverse=True)
    best = ranked[0]

    evidence = list(best.basis)
    evidence.append(f"{incident.occurrences} occurrence(s) of template: {incident.template or incident.title}")
    if ctx.pattern.incidents > 1:
        mttr = (f", mean time to resolve {ctx.pattern.mean_time_to_resolve:.1f} s"
                if ctx.pattern.mean_time_to_resolve is not None else "")
        evidence.append(f"pattern history: {ctx.pattern.incidents} incidents, {ctx.pattern.resolved} resolved, "
                        f"{ctx.pattern.escalated} escalated, {ctx.pattern.auto_resolved} auto-resolved{mttr}")
    worked = [f for f in ctx.fixes if f.successes]
    if worked:
        evidence.append("fixes that worked before: " + ", ".join(
            f"{f.runbook} {f.successes}/{f.attempts}" for f in sorted(worked, key=lambda f: -f.successes)))
    if ctx.related:
        top = ctx.related[0]
        evidence.append(f"{len(ctx.related)} related earlier incident(s); closest {top.id} "
                        f"(similarity {top.score:.2f}, {top.status})")
    if ctx.log is not None:
        if ctx.log.error:
            evidence.append(f"log {ctx.log.path}: {ctx.log.error}")
        else:
            evidence.append(f"{len(ctx.log.lines)} log line(s) around the event's first occurrence from "
                            f"{ctx.log.path} ({ctx.log.describe()})")
        evidence.extend(f"left out of the evidence: {note}" for note in ctx.log.left_out)

    gaps: list[str] = []
    if not ctx.runbook_hints:
        gaps.append(f"no runbook matches '{incident.title}' (service {incident.service or '-'})")
    else:
        failing = [f.runbook for f in ctx.fixes if f.runbook in ctx.runbook_hints and f.rate is not None
                   and f.rate < 0.5]
        if failing and len(failing) == len(ctx.runbook_hints):
            gaps.append(f"every matching runbook fails this pattern more often than not: {', '.join(failing)}")

    return Diagnosis(
        root_cause=best.cause,
        confidence=round(min(best.confidence, 0.95), 2),
        evidence=evidence,
        related=[asdict(r) for r in ctx.related],
        skill_gaps=gaps,
        alternatives=[{"cause": h.cause, "confidence": round(min(h.confidence, 0.95), 2), "basis": h.basis}
                      for h in ranked[1:4] if UNKNOWN not in h.cause],
        established=UNKNOWN not in best.cause,
        pattern=asdict(ctx.pattern),
        fixes=[asdict(f) for f in ctx.fixes],
        log=ctx.log.as_dict() if ctx.log is not None else None,
    )


def _candidates(incident: Incident, ctx: DiagnosticianContext) -> list[Hypothesis]:
    out: list[Hypothesis] = []
    fixes = {f.runbook: f for f in ctx.fixes}
    for rank, (name, hint) in enumerate(ctx.runbook_hints.items()):
        record = fixes.get(name)
        confidence = 0.5 - 0.1 * rank
        basis = [f"runbook {name} describes this pattern: {hint}"]
        if record is not None and record.rate is not None:
            confidence += 0.35 * record.rate
            basis.append(f"runbook {name} fixed this pattern {record.successes}/{record.attempts} times")
        out.append(Hypothesis(hint, max(confidence, 0.2), basis))
    by_cause: dict[str, list[Related]] = {}
    for r in ctx.related:
        if r.root_cause and UNKNOWN not in r.root_cause:
            by_cause.setdefault(r.root_cause, []).append(r)
    for cause, group in by_cause.items():   # related come best first: the first of a group is its best
        best = group[0]
        weight = 0.35 + 0.35 * min(best.score, 1.0) + (0.1 if best.same_fingerprint else 0.0)
        weight += 0.03 * (len(group) - 1)   # the same cause again and again
        names = ", ".join(f"{r.id} ({r.score:.2f})" for r in group[:4]) + (" ..." if len(group) > 4 else "")
        which = "earlier incident" if len(group) == 1 else f"{len(group)} earlier incidents"
        out.append(Hypothesis(cause, weight, [f"{which} {names} had root cause: {cause}"]))
    if ctx.log is not None and ctx.log.lines:
        messages = [(line.text, message_of(line.text)) for line in ctx.log.lines]
        for pattern, cause in _LOG_SIGNATURES:
            hits = [text for text, message in messages if pattern.search(message)]
            if hits:
                basis = [f"log line near the event: {hits[-1][:240]}"]
                if len(hits) > 1:
                    basis.append(f"{len(hits)} lines around the event show it")
                out.append(Hypothesis(cause, min(0.35 + 0.05 * len(hits), 0.6), basis))
    for tag, cause in _TAG_CAUSES:
        if tag in incident.tags:
            out.append(Hypothesis(cause, 0.3, [f"classified as {tag} (a tag alone is not a root cause)"],
                                  tag_only=True))
            break
    out.append(Hypothesis(f"{incident.title}: {UNKNOWN}", 0.15,
                          ["no runbook, earlier incident or log signature explains it"]))
    return out
