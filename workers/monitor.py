"""Monitors: short I/O-bound polls (files, HTTP, psutil); threads."""

from workers import PoolSettings

POOL = PoolSettings(queue="monitor", concurrency=4, pool="threads", prefetch_multiplier=1)


def main() -> None:
    """Start this role's worker (same as `erdu worker monitor`)."""
    from erdu_tasks.cli.main import run_worker

    run_worker("monitor")
