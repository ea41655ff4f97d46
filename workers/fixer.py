"""Fixer: runs remediation actions, so each task gets its own child process (a crash or a hung
action loses one child, not the pool) and children are recycled; late acks requeue a lost task.

One child by default: each prefork child is a full copy of the worker (about 80 MB resident), and
the whole local stack should idle under 1 GB. Raise it with `erdu worker fixer --concurrency N`,
ERDU_WORKER_CONCURRENCY='{"fixer": N}', or run more fixer workers (compose: ERDU_FIXER_REPLICAS)."""

from workers import PoolSettings

POOL = PoolSettings(queue="fixer", concurrency=1, pool="prefork", prefetch_multiplier=1,
                    max_tasks_per_child=200, max_memory_per_child_kb=300_000)
