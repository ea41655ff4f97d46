"""A worker whose consumer goes quiet while work waits reconnects by itself (real worker, real Redis)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow(14)
def test_a_worker_that_stops_polling_its_queue_reconnects_and_takes_the_waiting_work(redis_server, tmp_path):
    url = f"redis://127.0.0.1:{redis_server.port}/14"
    redis.Redis.from_url(url).flushdb()
    done = tmp_path / "done.log"
    env = {**os.environ, "ERDU_REDIS_URL": url, "ERDU_CONSUMER_STALL_SECONDS": "3", "LEAKY_DONE": str(done),
           "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("ERDU_CONFIG", None)
    log_path = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.integration.leaky_app", "worker", "-Q", "monitor",
         "-P", "threads", "-c", "2", "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle",
         "-l", "INFO"],
        env=env, cwd=tmp_path, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        from celery import Celery

        producer = Celery("producer", broker=url)
        wait_for(lambda: "ready" in log_path.read_text(errors="replace"), 60, 0.2, what="worker ready")
        for n in range(8):
            producer.send_task("leaky.touch", args=(n,), queue="monitor", routing_key="monitor", exchange="erdu")
        # Each channel takes three and goes quiet; only reconnecting gets the other five done.
        wait_for(lambda: done.exists() and len(done.read_text().split()) == 8, 60, 0.2,
                 what="all eight tasks done")
        text = log_path.read_text(errors="replace")
        assert sorted(map(int, done.read_text().split())) == list(range(8))   # each once
        assert text.count("consumer stalled") == 2, text[-3000:]
        assert worker.poll() is None   # the same process: reconnected, not restarted
        assert redis.Redis.from_url(url).llen("monitor") == 0
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
        redis.Redis.from_url(url).flushdb()
