"""Inhibition gate: while an open parent (a P1 of a service it depends on, by default) is open, a child waits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from erdu_tasks.escalation.gates.base import Facts, GateDecision, GateName, Outcome, passing
from erdu_tasks.escalation.inhibition import DependantsOf, InhibitRule, find_parent


@dataclass(frozen=True)
class InhibitionGate:
    """INHIBITED by the linked open parent, or by a candidate a rule makes the parent (rule set: link it)."""

    rules: Sequence[InhibitRule]
    dependants_of: DependantsOf
    name: GateName = GateName.INHIBITION
    dependencies_of: DependantsOf | None = None   # the reverse of dependants_of; None: read every candidate

    def check(self, facts: Facts, now: datetime) -> GateDecision:
        """The open parent that inhibits the incident, if any."""
        incident = facts.incident
        if incident is None:
            return passing(self.name, "no incident")
        parent = facts.parent
        if parent is not None and parent.is_open and parent.id == incident.parent_id:
            return GateDecision(self.name, Outcome.INHIBITED, f"inhibited by parent {parent.id}", parent=parent)
        if not self.rules:
            return passing(self.name, "inhibition is off")
        found = find_parent(incident, facts.candidates, self.rules, self.dependants_of)
        if found is None:
            return passing(self.name)
        parent, rule = found
        return GateDecision(self.name, Outcome.INHIBITED, f"inhibited by parent {parent.id}: {rule.describe()}",
                            parent=parent, rule=rule)
