"""Ingest: I/O bound (Postgres upserts); threads keep memory low."""

from workers import PoolSettings

POOL = PoolSettings(queue="ingest", concurrency=4, pool="threads", prefetch_multiplier=1)


def main() -> None:
    """Start this role's worker (same as `erdu worker ingest`)."""
    from erdu_tasks.cli.main import run_worker

    run_worker("ingest")
