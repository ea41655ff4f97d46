"""What every gate shares: its name, its outcome, the facts it reads and the decision it returns.

A gate is a pure function of (facts, now): no database, no clock of its own. The caller loads the
facts (`load_facts`) and applies the decision (a hold, a link, a held delivery).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from erdu_tasks.escalation.inhibition import InhibitRule
    from erdu_tasks.escalation.silences import Silence
    from erdu_tasks.model import Incident


class GateName(StrEnum):
    """The gates, in the order the list checks them."""

    SILENCE = "silence"
    INHIBITION = "inhibition"
    RATE_LIMIT = "rate_limit"
    APPROVAL = "approval"


class Outcome(StrEnum):
    """What a gate says; anything but PASS stops the caller (a log field and a metric label alike)."""

    PASS = "pass"
    SILENCED = "silenced"
    INHIBITED = "inhibited"
    RATE_LIMITED = "rate_limited"
    AWAITING_APPROVAL = "awaiting_approval"


@dataclass(frozen=True)
class Facts:
    """What the gates look at; a gate whose facts are absent passes."""

    incident: Incident | None = None
    silences: Sequence[Silence] = ()          # active at now (silence)
    parent: Incident | None = None            # the linked parent, when still open (inhibition)
    candidates: Sequence[Incident] = ()       # open top-level incidents that may become a parent (inhibition)
    channel: str | None = None                # rate limit: the channel of one notification ...
    sent_in_window: int | None = None         # ... and its count in this window, itself included
    approval_required: bool = False           # approval: the runbook needs a person's yes ...
    approved_by: str | None = None            # ... and who gave it


@dataclass(frozen=True)
class GateDecision:
    """One gate's verdict with a readable reason and what the caller needs to act on it."""

    gate: GateName | None
    outcome: Outcome
    reason: str = ""
    silence: Silence | None = None
    parent: Incident | None = None
    rule: InhibitRule | None = None           # set when the parent is new (the caller links it)
    count: int = 0
    limit: int = 0

    @property
    def passed(self) -> bool:
        """True when the caller may go on."""
        return self.outcome is Outcome.PASS


PASSED = GateDecision(None, Outcome.PASS, "every gate passed")


class Gate(Protocol):
    """One stage of the gate list."""

    name: GateName

    def check(self, facts: Facts, now: datetime) -> GateDecision:
        """The decision for these facts at now."""
        ...


def passing(name: GateName, why: str = "") -> GateDecision:
    """A PASS from one gate."""
    return GateDecision(name, Outcome.PASS, why)
