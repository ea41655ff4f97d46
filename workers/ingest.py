"""Ingest: I/O bound (Postgres upserts); threads keep memory low."""

from workers import PoolSettings

POOL = PoolSettings(queue="ingest", concurrency=4, pool="threads", prefetch_multiplier=1)
