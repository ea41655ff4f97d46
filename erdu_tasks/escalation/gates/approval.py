"""Approval gate: a runbook marked `approval: required` waits for a person's yes before it acts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from erdu_tasks.escalation.gates.base import Facts, GateDecision, GateName, Outcome, passing


@dataclass(frozen=True)
class ApprovalGate:
    """AWAITING_APPROVAL while a required approval is missing; the reconciler escalates after `deadline_seconds`."""

    deadline_seconds: float = 3600.0
    name: GateName = GateName.APPROVAL

    def check(self, facts: Facts, now: datetime) -> GateDecision:
        """PASS when no approval is needed or one was given."""
        if not facts.approval_required:
            return passing(self.name, "no approval needed")
        if facts.approved_by:
            return passing(self.name, f"approved by {facts.approved_by}")
        return GateDecision(self.name, Outcome.AWAITING_APPROVAL,
                            f"needs a person's approval (escalated if none within {self.deadline_seconds:.0f} s)")
