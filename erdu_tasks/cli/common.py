"""What every command shares: the consoles, one way to fail, settings and the runtime behind pre-flight checks."""

from __future__ import annotations

import os

import typer
from rich.console import Console

from erdu_tasks.errors import ConfigError, ServiceUnreachable

console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print the error in one line and exit with code."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def load_settings():
    """The settings, or a clear error and exit 2."""
    from erdu_tasks.settings import get_settings

    try:
        return get_settings()
    except ConfigError as exc:
        fail(str(exc))


def runtime(*, need_schema: bool = True):
    """The process runtime once Postgres answers (and its schema is current)."""
    from erdu_tasks.store.preflight import check_postgres
    from erdu_tasks.runtime import runtime as process_runtime

    settings = load_settings()
    try:
        check_postgres(settings.database_url, need_schema=need_schema)
    except ServiceUnreachable as exc:
        fail(str(exc))
    return process_runtime()


def who() -> str:
    """Who is acting: ERDU_USER, else the login name."""
    return os.environ.get("ERDU_USER") or os.environ.get("USER") or "operator"
