"""Beat is a singleton: a second `erdu beat` waits on the redbeat lock and takes over when the first dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis

from erdu_tasks.names import BEAT_LOCK_KEY, REDBEAT_PREFIX
from tests.conftest import RedisServer, wait_for


def reconciles(client: redis.Redis) -> int:
    """How many erdu.reconcile messages wait in the monitor queue (nobody consumes it here)."""
    return sum(json.loads(m)["headers"]["task"] == "erdu.reconcile" for m in client.lrange("monitor", 0, -1))


def rate(client: redis.Redis, seconds: float) -> int:
    before = reconciles(client)
    time.sleep(seconds)
    return reconciles(client) - before


@pytest.fixture()
def beats(tmp_path):
    server = RedisServer(tmp_path)
    env = {**os.environ, "ERDU_REDIS_URL": server.url, "ERDU_RECONCILE_INTERVAL_SECONDS": "1",
           "ERDU_STATE_DIR": str(tmp_path / "var"), "PYTHONUNBUFFERED": "1"}
    for key in ("ERDU_CONFIG", "ERDU_MONITORS"):
        env.pop(key, None)
    procs: list[subprocess.Popen] = []

    def start(name: str) -> subprocess.Popen:
        log_path = tmp_path / f"{name}.log"
        proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", "beat", "--loglevel", "INFO"], env=env,
                                cwd=tmp_path, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        proc.log_path = log_path
        procs.append(proc)
        return proc

    start.server = server
    yield start, redis.Redis.from_url(server.url)
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    server.stop()


def log_of(proc) -> str:
    return proc.log_path.read_text(errors="replace")


@pytest.mark.slow(25)
def test_only_one_beat_schedules_and_the_second_takes_over_when_the_first_dies(beats):
    start, client = beats
    first = start("beat-1")
    wait_for(lambda: reconciles(client) >= 2, 60, what="the first beat scheduling")
    assert "Acquired lock" in log_of(first)

    second = start("beat-2")
    wait_for(lambda: "beat: Starting" in log_of(second), 60, what="the second beat started")
    time.sleep(2)
    assert second.poll() is None, log_of(second)[-2000:]
    # One reconcile a second: two beats scheduling would double it.
    sent = rate(client, 6.0)
    assert 4 <= sent <= 8, f"{sent} reconcile messages in 6 s"
    assert "Acquired lock" not in log_of(second)
    lock_key = REDBEAT_PREFIX + BEAT_LOCK_KEY
    assert client.exists(lock_key)

    os.killpg(first.pid, signal.SIGKILL)  # a crash: the lock is not released, it expires
    first.wait(10)
    killed_at = time.monotonic()
    wait_for(lambda: "Acquired lock" in log_of(second), 60, interval=0.5, what="the second beat taking the lock")
    took = time.monotonic() - killed_at
    assert took <= 10, f"took over after {took:.1f} s"   # the lock's 6 s plus a standby's retry
    print(f"\nstandby beat took over {took:.1f} s after the active one was killed")
    sent = rate(client, 5.0)
    assert 3 <= sent <= 7, f"{sent} reconcile messages in 5 s after the takeover"


@pytest.mark.slow(18)
@pytest.mark.parametrize("persistent", [False, True], ids=["redis-forgets-the-lock", "redis-keeps-the-lock"])
def test_beat_rides_out_a_redis_crash_and_schedules_again_as_soon_as_redis_is_back(beats, persistent):
    start, client = beats
    server = start.server
    if persistent:   # the lock survives the crash (append-only file, fsync always)
        client.config_set("appendonly", "yes")
        client.config_set("appendfsync", "always")
        wait_for(lambda: client.info("persistence")["aof_rewrite_in_progress"] == 0, 30, what="AOF on")
        server.appendonly = True
        server.extra_args = ("--appendfsync", "always")
    beat = start("beat-1")
    wait_for(lambda: reconciles(client) >= 2, 60, what="beat scheduling")
    lock_key = REDBEAT_PREFIX + BEAT_LOCK_KEY
    token = client.get(lock_key)
    client.set("before-the-crash", "1")

    server.proc.kill()
    server.proc.wait(10)
    time.sleep(4)
    server.start()
    back_at = time.monotonic()
    client = redis.Redis.from_url(server.url)
    # The crash lost (or kept) what Redis held. Not asked of the lock itself: the beat, retrying
    # every moment, may already have taken it again.
    assert client.exists("before-the-crash") == (1 if persistent else 0)
    client.delete("monitor")   # what the AOF kept from before the crash
    # Scheduling resumes within seconds, not after a restart.
    wait_for(lambda: reconciles(client) >= 2, 20, 0.2, what="beat scheduling again")
    took = time.monotonic() - back_at
    assert beat.poll() is None, log_of(beat)[-3000:]
    assert took < 10, f"scheduling resumed {took:.1f} s after Redis came back"
    assert client.get(lock_key) == token   # the same beat holds the same lock
    text = log_of(beat)
    assert "scheduling paused" in text and "scheduling resumed" in text
    assert ("took its lock back" in text) is (not persistent)
    assert ("wrote it again" in text) is (not persistent)

    # Still a singleton: a second beat waits.
    second = start("beat-2")
    wait_for(lambda: "beat: Starting" in log_of(second), 60, what="the second beat started")
    sent = rate(client, 5.0)
    assert 3 <= sent <= 7, f"{sent} reconcile messages in 5 s"
    assert "Acquired lock" not in log_of(second)
