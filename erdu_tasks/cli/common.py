"""What every command shares: the consoles, one way to fail, settings and the runtime behind pre-flight checks."""

from __future__ import annotations

import os
import re
import sys

import typer
from rich.console import Console
from rich.markup import escape

from erdu_tasks.errors import ConfigError, ServiceUnreachable

console = Console()
err = Console(stderr=True)


def _flags_show_no_type() -> None:
    """A flag takes no value: its help line shows none.

    Typer 0.29 prints the flag's Python type (`<bool>`) in the type column of every flag, --help included
    (typer/core.py, TyperOption.display_type_rich); a flag has nothing to type. Delete this once Typer leaves
    the column empty for flags again."""
    from typer.core import TyperOption

    original = TyperOption.display_type_rich
    if getattr(original, "erdu_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx: typer.Context) -> str | None:
        return None if self.is_flag and self.metavar is None else original(self, ctx)

    display_type_rich.erdu_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_show_no_type()


def fail(message: str, code: int = 2) -> None:
    """Print the error in one line and exit with code."""
    err.print(f"[bold red]error:[/] {shown(message)}", highlight=False)
    raise typer.Exit(code)


def load_settings():
    """The settings, or a clear error and exit 2."""
    from erdu_tasks.settings import get_settings

    try:
        return get_settings()
    except ConfigError as exc:
        fail(str(exc))


def runtime(*, need_schema: bool = True):
    """The command's runtime once Postgres answers (and its schema is current); one per process."""
    from erdu_tasks.runtime import Runtime
    from erdu_tasks.store.preflight import check_postgres

    global _runtime
    settings = load_settings()
    try:
        check_postgres(settings.database_url, need_schema=need_schema)
    except ServiceUnreachable as exc:
        fail(str(exc))
    if _runtime is None:   # not the Celery app's: a command that only reads never loads Celery
        _runtime = Runtime(settings)
    return _runtime


def close_runtime() -> None:
    """Close the Postgres pool the command opened (and the Celery app's, if a command loaded it) while the
    interpreter still runs: their threads are not left connecting while Python shuts down."""
    global _runtime
    process = sys.modules.get("erdu_tasks.app")
    for rt in (_runtime, getattr(process, "_runtime", None)):
        if rt is not None:
            rt.db.close()
    _runtime = None


_runtime = None


def incident_id_of(rt, given: str) -> str:
    """The full id of the one incident whose id is `given` or starts with it (`INC-` may be left out).

    No match, or a prefix that fits several incidents, ends the command with exit code 1 and says which."""
    text = given.strip()
    candidates = [text] if text.upper().startswith("INC-") else [text, "INC-" + text]
    like = [c.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%" for c in candidates]
    with rt.db.transaction() as conn:
        exact = conn.execute("SELECT id FROM incidents WHERE id = ANY(%s) LIMIT 1", (candidates,)).fetchone()
        if exact:
            return exact["id"]
        rows = conn.execute("SELECT id FROM incidents WHERE id LIKE ANY(%s) ORDER BY id LIMIT 6", (like,)).fetchall()
    if not text or not rows:
        fail(f"no incident {given}", 1)
    if len(rows) > 1:
        more = ", ".join(r["id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        fail(f"{given} is the start of several incident ids ({more}); give more of it", 1)
    return rows[0]["id"]


def who() -> str:
    """Who is acting: ERDU_USER, else the login name."""
    return os.environ.get("ERDU_USER") or os.environ.get("USER") or "operator"


# C0 and C1 control characters (ESC starts every terminal escape sequence), DEL, and the invisible
# format characters that reorder or hide text (bidi overrides, zero-width spaces).
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_UNSAFE_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def _visible(match: re.Match[str]) -> str:
    char = match.group(0)
    return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(char) or (
        f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def plain(value: object, *, multiline: bool = False) -> str:
    """Text from an event, safe for a terminal: control and invisible characters are shown as escapes.

    Printed as is (no markup); `shown` adds Rich markup escaping for tables and console.print.
    """
    text = "" if value is None else str(value)
    return (_UNSAFE if multiline else _UNSAFE_ONE_LINE).sub(_visible, text)


def shown(value: object, *, limit: int | None = None) -> str:
    """One line of event text for Rich output: no control characters, no markup interpreted, cut at a word."""
    text = plain(value)
    if limit is not None and len(text) > limit:
        cut = text[: limit - 1]
        space = cut.rfind(" ")
        text = (cut[:space] if space > limit // 2 else cut) + "…"
    return escape(text)
