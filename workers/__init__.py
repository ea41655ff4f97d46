"""Pool settings per role: which queue, how many, which pool type, how much prefetch. Nothing else."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PoolSettings:
    """How one role's worker pool runs."""

    queue: str
    concurrency: int
    pool: str               # prefork | threads | solo
    prefetch_multiplier: int = 1
    max_tasks_per_child: int | None = None
    max_memory_per_child_kb: int | None = None


def pool_for(role: str) -> PoolSettings:
    """The pool settings of a role, from its module in this package."""
    from importlib import import_module

    try:
        module = import_module(f"workers.{role}")
    except ModuleNotFoundError:
        raise KeyError(role) from None
    return module.POOL
