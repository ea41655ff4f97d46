"""What a role's brain is: one method per role returning the role's decision and how it was reached."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from erdu_tasks.model import Incident
from erdu_tasks.roles.commander import Assessment, CommanderContext
from erdu_tasks.roles.diagnostician import Diagnosis, DiagnosticianContext
from erdu_tasks.roles.resolver import Resolution, ResolverContext

T = TypeVar("T")


@dataclass(frozen=True)
class Thought(Generic[T]):
    """A decision plus which brain made it; `fallback` says why a configured brain was not used."""

    value: T
    brain: str
    model: str | None = None
    fallback: str | None = None
    seconds: float = 0.0

    def note(self) -> dict[str, Any]:
        """JSON-friendly summary stored with the decision."""
        return {"name": self.brain, "model": self.model, "fallback": self.fallback, "seconds": round(self.seconds, 3)}


class CommanderBrain(Protocol):
    """Assesses an incident."""

    name: str

    def assess(self, incident: Incident, ctx: CommanderContext) -> Thought[Assessment]:
        """Severity, path and reasons."""
        ...


class DiagnosticianBrain(Protocol):
    """Diagnoses an incident."""

    name: str

    def diagnose(self, incident: Incident, ctx: DiagnosticianContext) -> Thought[Diagnosis]:
        """Root cause with evidence and confidence."""
        ...


class ResolverBrain(Protocol):
    """Writes the closing words of an incident."""

    name: str

    def resolve(self, incident: Incident, ctx: ResolverContext) -> Thought[Resolution]:
        """Summary, impact, lessons, follow-ups."""
        ...


@dataclass(frozen=True)
class Brains:
    """One brain per thinking role. The fixer has none: only runbooks decide what runs."""

    commander: CommanderBrain
    diagnostician: DiagnosticianBrain
    resolver: ResolverBrain
