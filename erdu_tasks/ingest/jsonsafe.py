"""What Postgres can store: no NUL, no lone surrogates, finite numbers, bounded nesting."""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 32


class UnsafeJSON(ValueError):
    """Decoded JSON that cannot be stored as is; the message says why."""


def text_problem(text: str) -> str | None:
    """Why a string cannot be stored as text in Postgres (NUL, lone surrogates), or None."""
    if "\x00" in text:
        return "NUL characters (\\u0000) are not allowed"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "unpaired surrogate escapes (\\ud800-\\udfff) are not allowed"
    return None


def check_tree(data: Any, max_depth: int = MAX_DEPTH, error: type[ValueError] = UnsafeJSON) -> None:
    """Raise error if data nests deeper than max_depth or holds text or numbers Postgres cannot store."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > max_depth:
                raise error(f"JSON nested deeper than {max_depth} levels")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, value in items:
                if isinstance(key, str):
                    problem = text_problem(key)
                    if problem:
                        raise error(f"key {key[:40]!r}: {problem}")
                stack.append((value, depth + 1))
        elif isinstance(node, str):
            problem = text_problem(node)
            if problem:
                raise error(problem)
        elif isinstance(node, float) and not math.isfinite(node):
            raise error(f"number {node} is not a finite JSON number")
