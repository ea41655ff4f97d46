"""Diagnostician: evidence gathering (Postgres, log files); threads."""

from workers import PoolSettings

POOL = PoolSettings(queue="diagnostician", concurrency=4, pool="threads", prefetch_multiplier=1)
