"""Commander: short decisions over Postgres reads; threads."""

from workers import PoolSettings

POOL = PoolSettings(queue="commander", concurrency=4, pool="threads", prefetch_multiplier=1)


def main() -> None:
    """Start this role's worker (same as `erdu worker commander`)."""
    from erdu_tasks.cli.main import run_worker

    run_worker("commander")
