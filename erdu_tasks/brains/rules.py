"""The default brains: the deterministic rules of erdu_tasks.roles."""

from __future__ import annotations

from erdu_tasks.model import Incident
from erdu_tasks.roles import commander, diagnostician, resolver
from erdu_tasks.brains.base import Thought


class RulesCommander:
    """The commander's rules."""

    name = "rules"

    def assess(self, incident: Incident, ctx: commander.CommanderContext) -> Thought[commander.Assessment]:
        """Blast radius, hours, load, flapping, rate; proven fix or people."""
        return Thought(commander.assess(incident, ctx), self.name)


class RulesDiagnostician:
    """The diagnostician's rules."""

    name = "rules"

    def diagnose(self, incident: Incident,
                 ctx: diagnostician.DiagnosticianContext) -> Thought[diagnostician.Diagnosis]:
        """Ranked hypotheses from runbook hints, history, log signatures and tags."""
        return Thought(diagnostician.diagnose(incident, ctx), self.name)


class RulesResolver:
    """The resolver's rules."""

    name = "rules"

    def resolve(self, incident: Incident, ctx: resolver.ResolverContext) -> Thought[resolver.Resolution]:
        """Summary, impact, lessons and follow-ups from the facts."""
        return Thought(resolver.resolve(incident, ctx), self.name)
