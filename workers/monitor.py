"""Monitors: short I/O-bound polls (files, HTTP, psutil); threads."""

from workers import PoolSettings

POOL = PoolSettings(queue="monitor", concurrency=4, pool="threads", prefetch_multiplier=1)
