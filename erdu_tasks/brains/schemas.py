"""The JSON an LLM brain must answer with, per role; anything else is refused and the rules decide.

Every string a model returns is text, never markup or a terminal instruction: `ModelText` strips control
and invisible format characters (escape sequences, bell, carriage returns, bidi overrides, zero-width
characters), folds it onto one line and caps its length. Reports and notifications escape it again where
they print it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from erdu_tasks.model import Severity

# C0/C1 controls (ESC, BEL, CR, NUL ...), DEL, and the format characters that reorder or hide text.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def plain_text(value: str, limit: int) -> str:
    """Model text as one plain line: controls dropped (newlines and tabs become spaces), spaces folded, cut at
    `limit` characters with an ellipsis."""
    text = " ".join(_UNSAFE.sub(lambda m: " " if m.group(0) in "\n\r\t" else "", value).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _text(limit: int, min_length: int = 1):
    return Annotated[str, AfterValidator(lambda v: plain_text(v, limit)), AfterValidator(lambda v: _long(v, min_length))]


def _long(value: str, min_length: int) -> str:
    if len(value) < min_length:
        raise ValueError(f"needs at least {min_length} visible character(s)")
    return value


LINE_CHARS = 300
ROOT_CAUSE_CHARS = 500
SUMMARY_CHARS = 1500

_Line = _text(LINE_CHARS)


class _Answer(BaseModel):
    # Extra keys are ignored; every key we read is checked for type and range.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class CommanderAnswer(_Answer):
    """The commander's advice; the rules bound it."""

    severity: Severity
    decision: Literal["automate", "auto_fix", "escalate"]
    reasons: list[_Line] = Field(min_length=1, max_length=20)
    runbook: _text(100) | None = None


class DiagnosisAnswer(_Answer):
    """The diagnostician's hypothesis."""

    root_cause: _text(ROOT_CAUSE_CHARS, 3)
    confidence: float = Field(ge=0, le=1)
    evidence: list[_Line] = Field(min_length=1, max_length=30)
    skill_gaps: list[_Line] = Field(default_factory=list, max_length=10)


class Impact(_Answer):
    """Who felt the incident, and how."""

    business: _text(LINE_CHARS)
    technical: _text(LINE_CHARS)
    user: _text(LINE_CHARS)


class ResolutionAnswer(_Answer):
    """The resolver's closing words."""

    summary: _text(SUMMARY_CHARS, 10)
    impact: Impact
    lessons_learned: list[_Line] = Field(min_length=1, max_length=15)
    follow_ups: list[_Line] = Field(default_factory=list, max_length=15)
