"""Pluggable brains for the thinking roles: the rules by default, an OpenAI-compatible model if configured.

A brain advises; the role's own rules bound what it may say. Brains sit beside roles/ rather than inside it
because the model brain speaks HTTP, and roles import no I/O library.

May import: roles, store (learned history), model, settings, httpx."""

from __future__ import annotations

from typing import Any

from erdu_tasks.settings import CommanderConfig, LearningConfig
from erdu_tasks.brains.base import Brains, CommanderBrain, DiagnosticianBrain, ResolverBrain, Thought
from erdu_tasks.brains.llm import BrainConfig, ChatClient, LLMCommander, LLMDiagnostician, LLMResolver
from erdu_tasks.brains.rules import RulesCommander, RulesDiagnostician, RulesResolver

__all__ = ["Brains", "BrainConfig", "CommanderBrain", "DiagnosticianBrain", "ResolverBrain", "Thought",
           "build_brains", "check_settings"]


def build_brains(cfg: BrainConfig, client: ChatClient | None = None) -> Brains:
    """Rules for every role; the LLM brain for the roles the config lists when it is active."""
    rules = Brains(RulesCommander(), RulesDiagnostician(), RulesResolver())
    if not cfg.active:
        return rules
    client = client or ChatClient(cfg)
    return Brains(
        LLMCommander(cfg, rules.commander, client) if "commander" in cfg.roles else rules.commander,
        LLMDiagnostician(cfg, rules.diagnostician, client) if "diagnostician" in cfg.roles else rules.diagnostician,
        LLMResolver(cfg, rules.resolver, client) if "resolver" in cfg.roles else rules.resolver,
    )


def check_settings(settings: Any) -> None:
    """Validate the commander, learning and brain sections; ConfigError naming what is wrong."""
    CommanderConfig.from_section(settings.commander)
    LearningConfig.from_section(settings.learning)
    BrainConfig.from_section(settings.brain)
