"""The JSON an LLM brain must answer with, per role; anything else is refused and the rules decide."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from erdu_tasks.model import Severity

_Line = Annotated[str, Field(min_length=1, max_length=1000)]


class _Answer(BaseModel):
    # Extra keys are ignored; every key we read is checked for type and range.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class CommanderAnswer(_Answer):
    """The commander's decision."""

    severity: Severity
    decision: Literal["automate", "auto_fix", "escalate"]
    reasons: list[_Line] = Field(min_length=1, max_length=20)
    runbook: str | None = Field(default=None, max_length=100)


class DiagnosisAnswer(_Answer):
    """The diagnostician's hypothesis."""

    root_cause: str = Field(min_length=3, max_length=2000)
    confidence: float = Field(ge=0, le=1)
    evidence: list[_Line] = Field(min_length=1, max_length=30)
    skill_gaps: list[_Line] = Field(default_factory=list, max_length=10)


class Impact(_Answer):
    """Who felt the incident, and how."""

    business: str = Field(min_length=1, max_length=1000)
    technical: str = Field(min_length=1, max_length=1000)
    user: str = Field(min_length=1, max_length=1000)


class ResolutionAnswer(_Answer):
    """The resolver's closing words."""

    summary: str = Field(min_length=10, max_length=3000)
    impact: Impact
    lessons_learned: list[_Line] = Field(min_length=1, max_length=15)
    follow_ups: list[_Line] = Field(default_factory=list, max_length=15)
