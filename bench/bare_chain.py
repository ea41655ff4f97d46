"""The yardstick for bench/pipeline.py: a chain of four no-op Celery tasks, nothing else.

Same broker, same Celery configuration as ERDU (serializers, late acks, prefetch, events, transport
options) and, per hop, the same pool settings as the ERDU role it stands for (workers/*.py).
Run one hop's worker with `python -m bench.bare_chain ROLE`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from celery import Celery, chain  # noqa: E402
from kombu import Exchange, Queue  # noqa: E402

HOPS = ("commander", "diagnostician", "fixer", "resolver")
DONE_KEY = "bench:bare:done"
_NOT_SHARED = {"include", "task_queues", "task_routes", "task_default_queue", "task_default_exchange",
               "beat_schedule", "erdu_settings", "task_create_missing_queues"}


def queue_of(hop: str) -> str:
    """The bare queue standing in for an ERDU role's queue."""
    return f"bare-{hop}"


def make_app(redis_url: str | None = None) -> Celery:
    """A Celery app with ERDU's own configuration, but four no-op tasks and four bare queues."""
    from erdu_tasks.app import make_celery
    from erdu_tasks.settings import get_settings, load_settings

    erdu = make_celery(load_settings(redis_url=redis_url) if redis_url else get_settings())
    bare = Celery("bare", broker=erdu.conf.broker_url)
    bare.conf.update({k: v for k, v in erdu.conf.changes.items() if k not in _NOT_SHARED})
    exchange = Exchange("bare", type="direct")
    bare.conf.update(task_queues=[Queue(queue_of(h), exchange, routing_key=queue_of(h)) for h in HOPS],
                     task_default_queue=queue_of(HOPS[0]), task_default_exchange="bare")
    return bare


app = make_app()
_redis = None


@app.task(name="bare.noop")
def noop(payload: dict) -> dict:
    """Do nothing; hand the payload on."""
    return payload


@app.task(name="bare.done")
def done(payload: dict) -> None:
    """The last hop: note when the chain finished (the only work any hop does)."""
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(app.conf.broker_url)
    _redis.rpush(DONE_KEY, json.dumps({**payload, "done": time.time()}))


def send(producer: Celery, key: str) -> float:
    """Start one chain through the four hops (published by `producer`, an app from make_app); its send time."""
    sent = time.time()
    hops = [producer.signature("bare.noop", args=({"key": key, "sent": sent},), queue=queue_of(HOPS[0]))]
    hops += [producer.signature("bare.noop", queue=queue_of(h)) for h in HOPS[1:-1]]
    hops.append(producer.signature("bare.done", queue=queue_of(HOPS[-1])))
    chain(*hops).apply_async()
    return sent


def run_worker(hop: str) -> None:
    """Start the worker of one hop with the pool settings of the ERDU role it stands for."""
    from workers import pool_for

    pool = pool_for(hop)
    argv = ["worker", "-Q", queue_of(hop), "-n", f"bare-{hop}@%h", "-c", str(pool.concurrency), "-P", pool.pool,
            "--prefetch-multiplier", str(pool.prefetch_multiplier), "-E", "--without-gossip", "--without-mingle",
            "-l", "WARNING"]
    if pool.max_tasks_per_child:
        argv += ["--max-tasks-per-child", str(pool.max_tasks_per_child)]
    if pool.max_memory_per_child_kb:
        argv += ["--max-memory-per-child", str(pool.max_memory_per_child_kb)]
    app.worker_main(argv)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in HOPS:
        sys.exit(f"usage: python -m bench.bare_chain {{{','.join(HOPS)}}}  (one hop's worker; "
                 "bench/pipeline.py starts them and prints the figures)")
    run_worker(sys.argv[1])
