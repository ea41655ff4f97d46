"""Resolver: reports and learning; threads."""

from workers import PoolSettings

POOL = PoolSettings(queue="resolver", concurrency=4, pool="threads", prefetch_multiplier=1)
