"""Stateless fingerprints from log templates (first version: regex masks)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_MASKS = [
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), "<UUID>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<IP>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<HEX>"),
    (re.compile(r"\d+"), "<NUM>"),
]


@dataclass(frozen=True)
class Template:
    """A message's template, its stable key and a short title."""

    key: str
    template: str
    title: str


def fingerprint(message: str, service: str | None = None) -> Template:
    """Mask the variable parts of a message and hash the template with the service."""
    text = message.strip().splitlines()[0] if message.strip() else ""
    for pattern, token in _MASKS:
        text = pattern.sub(token, text)
    digest = hashlib.sha1(f"{service or ''}\x1f{text}".encode()).hexdigest()[:16]
    return Template(key=digest, template=text, title=text[:80])
