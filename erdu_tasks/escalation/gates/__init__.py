"""The gate list: silence -> inhibition -> rate limit -> approval, built once, asked by every caller.

Each gate is a small module behind one interface (`Gate.check(facts, now) -> GateDecision`).
`build_gates` assembles the list once (the runtime keeps it); the commander asks silence and
inhibition before it assesses, the fixer asks silence before it acts and approval before a
runbook that needs one, the sweeper asks silence and inhibition before it notifies and the
rate limit for each delivery. The first gate that does not pass decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
import structlog

from erdu_tasks.catalog import Catalog
from erdu_tasks.errors import ConfigError
from erdu_tasks.escalation import inhibition as inhibit_rules, silences as silence_store
from erdu_tasks.escalation.gates.approval import ApprovalGate
from erdu_tasks.escalation.gates.base import PASSED, Facts, Gate, GateDecision, GateName, Outcome
from erdu_tasks.escalation.gates.inhibition import InhibitionGate
from erdu_tasks.escalation.gates.rate_limit import RateLimitGate
from erdu_tasks.escalation.gates.silence import SilenceGate
from erdu_tasks.escalation.inhibition import DependantsOf, InhibitRule
from erdu_tasks.settings.escalation import EscalationConfig
from erdu_tasks.settings.intervals import TimeIntervals
from erdu_tasks.model import Incident

__all__ = ["ApprovalGate", "Facts", "Gate", "GateDecision", "GateName", "Gates", "InhibitionGate", "Outcome",
           "RateLimitGate", "SilenceGate", "build_gates", "gates_from_settings", "load_facts"]

log = structlog.get_logger("erdu.escalation")


@dataclass(frozen=True)
class Gates:
    """The ordered gate list; callers ask the subset they need, in the list's order."""

    gates: tuple[Gate, ...]

    def __getitem__(self, name: GateName) -> Gate:
        return next(g for g in self.gates if g.name is name)

    @property
    def inhibit_rules(self) -> tuple[InhibitRule, ...]:
        """The inhibition gate's rules (what the candidates query needs)."""
        gate = self[GateName.INHIBITION]
        return tuple(gate.rules) if isinstance(gate, InhibitionGate) else ()

    @property
    def dependencies_of(self) -> DependantsOf | None:
        """What a service depends on (the catalog), so only the open incidents that could inhibit are read."""
        gate = self[GateName.INHIBITION]
        return gate.dependencies_of if isinstance(gate, InhibitionGate) else None

    @property
    def rate_limit(self) -> RateLimitGate:
        """The rate-limit gate (its per-channel limits label held deliveries)."""
        gate = self[GateName.RATE_LIMIT]
        assert isinstance(gate, RateLimitGate)
        return gate

    def check(self, facts: Facts, now: datetime, only: Iterable[GateName] | None = None) -> GateDecision:
        """The first decision that is not PASS among the asked gates, else PASSED."""
        asked = set(GateName) if only is None else set(only)
        for gate in self.gates:
            if gate.name in asked:
                decision = gate.check(facts, now)
                if not decision.passed:
                    return decision
        return PASSED


def build_gates(*, rules: Sequence[InhibitRule] = inhibit_rules.DEFAULT_RULES,
                dependants_of: DependantsOf = lambda service: (), rate_limits: dict[str, int] | None = None,
                approval_deadline_seconds: float = 3600.0, intervals: TimeIntervals | None = None,
                dependencies_of: DependantsOf | None = None) -> Gates:
    """Assemble the gate list in its one order: silence, inhibition, rate limit, approval."""
    return Gates((
        SilenceGate(dict(intervals or {})),
        InhibitionGate(tuple(rules), dependants_of, dependencies_of=dependencies_of),
        RateLimitGate(dict(rate_limits or {})),
        ApprovalGate(approval_deadline_seconds),
    ))


def gates_from_settings(settings: Any, catalog: Catalog) -> Gates:
    """The gate list of these settings; bad inhibit rules (refused at start-up) only switch inhibition off."""
    try:
        rules = inhibit_rules.rules_from_section(settings.escalation)
    except ConfigError as exc:
        log.error("inhibition rules ignored", error=str(exc))
        rules = ()
    config = EscalationConfig.from_settings_section(settings.escalation, settings.alerts_dir)
    return build_gates(rules=rules, dependants_of=catalog.dependants, rate_limits=config.rate_limits(),
                       approval_deadline_seconds=settings.approval_deadline_seconds,
                       intervals=config.time_intervals, dependencies_of=catalog.dependencies)


def load_facts(conn: psycopg.Connection, gates: Gates, incident: Incident, now: datetime,
               only: Iterable[GateName]) -> Facts:
    """Read from Postgres what the asked gates look at for one incident."""
    asked = set(only)
    active = silence_store.active_silences(conn, now) if GateName.SILENCE in asked else ()
    parent = candidates = None
    if GateName.INHIBITION in asked:
        parent = inhibit_rules.open_parent(conn, incident)
        rules = gates.inhibit_rules
        candidates = (inhibit_rules.candidates(conn, rules, child=incident, dependencies_of=gates.dependencies_of)
                      if rules and parent is None else ())
    return Facts(incident=incident, silences=active, parent=parent, candidates=candidates or ())
