"""Commander: short decisions over Postgres reads; threads."""

from workers import PoolSettings

POOL = PoolSettings(queue="commander", concurrency=4, pool="threads", prefetch_multiplier=1)
