"""Versioned SQL migrations, applied in order, each once, recorded in schema_migrations."""

from __future__ import annotations

from importlib import resources

import psycopg
from psycopg import sql

from erdu_tasks.store.db import connect_once, redact
from erdu_tasks.errors import ServiceUnreachable

_LOCK_ID = 0x45524455  # "ERDU": one migrator at a time


def migration_files() -> list[tuple[str, str]]:
    """(version, SQL text) for every packaged migration, in order."""
    folder = resources.files("erdu_tasks.store") / "migrations"
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(p.name.removesuffix(".sql"), p.read_text(encoding="utf-8")) for p in files]


def ensure_database(url: str) -> bool:
    """Create the database named in url if it does not exist; True if created."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    name = info.get("dbname")
    if not name:
        return False
    try:
        conn = connect_once(url)
        conn.close()
        return False
    except ServiceUnreachable as exc:
        if "does not exist" not in str(exc):
            raise
    admin = psycopg.conninfo.make_conninfo(url, dbname="postgres")
    with connect_once(admin) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
    return True


def migrate(url: str) -> list[str]:
    """Apply pending migrations; returns the versions applied now (empty when up to date)."""
    ensure_database(url)
    applied_now: list[str] = []
    with connect_once(url) as conn:
        conn.autocommit = False
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, text in migration_files():
                if version in done:
                    continue
                try:
                    conn.execute(text)
                except psycopg.Error as exc:
                    raise RuntimeError(f"migration {version} failed on {redact(url)}: {exc}") from exc
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                applied_now.append(version)
    return applied_now
