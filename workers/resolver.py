"""Resolver: reports and learning; threads."""

from workers import PoolSettings

POOL = PoolSettings(queue="resolver", concurrency=4, pool="threads", prefetch_multiplier=1)


def main() -> None:
    """Start this role's worker (same as `erdu worker resolver`)."""
    from erdu_tasks.cli.main import run_worker

    run_worker("resolver")
