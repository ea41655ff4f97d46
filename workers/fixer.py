"""Fixer: runs remediation actions, so each task gets its own child process (a crash or a hung
action loses one child, not the pool) and children are recycled; late acks requeue a lost task.

Two children by default, so one slow fix (an action waiting on its timeout, a validation holding
for stable_for) does not hold up the fix of another incident; fixes of one service are planned one
at a time (fixer/engine.serialize_fixes_of), so rate limits hold across children and fixers. Each
child is a copy of the worker (about 80 MB resident, most of it shared). Change it with `erdu worker fixer --concurrency N`,
ERDU_WORKER_CONCURRENCY='{"fixer": N}', or run more fixer workers (compose: ERDU_FIXER_REPLICAS)."""

from workers import PoolSettings

POOL = PoolSettings(queue="fixer", concurrency=2, pool="prefork", prefetch_multiplier=1,
                    max_tasks_per_child=200, max_memory_per_child_kb=300_000)
