"""Start-up checks: is Redis there, is Postgres there, is the schema current? One clear line if not."""

from __future__ import annotations

from erdu_tasks.store.db import connect_once, redact
from erdu_tasks.errors import ServiceUnreachable
from erdu_tasks.redisconn import redis_client
from erdu_tasks.store.migrate import migration_files
from erdu_tasks.settings import Settings


def check_redis(url: str, *, timeout: float = 3.0) -> None:
    """Ping Redis or raise ServiceUnreachable naming the URL and the fix."""
    import redis   # here, not at the top: a command that needs Postgres only does not load the Redis client

    try:
        client = redis_client(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        client.ping()
        client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise ServiceUnreachable(
            f"cannot reach Redis at {redact_redis(url)}: {exc}. Start Redis, or set ERDU_REDIS_URL "
            "to a reachable one (e.g. redis://127.0.0.1:6379/0)."
        ) from None


def check_postgres(url: str, *, need_schema: bool = True) -> None:
    """Connect to Postgres (and check migrations are applied) or raise ServiceUnreachable."""
    with connect_once(url) as conn:
        if not need_schema:
            return
        row = conn.execute("SELECT to_regclass('schema_migrations') AS t").fetchone()
        applied = set()
        if row and row["t"]:
            applied = {r["version"] for r in conn.execute("SELECT version FROM schema_migrations")}
        missing = [v for v, _ in migration_files() if v not in applied]
        if missing:
            raise ServiceUnreachable(
                f"database {redact(url)} is missing migrations {', '.join(missing)}: run `erdu migrate`."
            )


def check_all(settings: Settings, *, need_schema: bool = True) -> None:
    """Both checks, Redis first."""
    check_redis(settings.redis_url)
    check_postgres(settings.database_url, need_schema=need_schema)


def redact_redis(url: str) -> str:
    """A Redis URL without its password."""
    if "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
        scheme, rest = url.split("//", 1)
        creds, host = rest.split("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}//{user}:***@{host}"
    return url
