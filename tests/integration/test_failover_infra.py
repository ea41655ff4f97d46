"""Failover of the infrastructure under a burst: a Redis master killed (Sentinel promotes its replica) and a
Postgres primary stopped (its streaming replica promoted), with real workers and beat that follow by themselves.

One setup for both faults: a Redis master, its replica and three sentinels; a Postgres primary and its replica
(pg_basebackup -R); one worker process serving every role and one beat, all on a `sentinel://` URL and a libpq
multi-host URL. One test, so that no test scheduler splits the setup: each fault gets one small burst, injected
mid-burst, and a count, in Postgres and in the notes the runbook's action leaves, of what became of every event.
The larger runs are bench/failover.py's.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from bench.failover_infra import FAST_RECOVERY, Burst, PostgresPair, SentinelRedis, all_final, outcome, runbook
from erdu_tasks.names import BEAT_LOCK_KEY, REDBEAT_PREFIX
from tests.conftest import Stack, wait_for
from tests.integration.faultkit import start_beat, stop_process_group


EVENTS = 24


class HA:
    """The module's servers, workers and beat (start() builds them; close() stops whatever was built)."""

    redis: SentinelRedis | None = None
    pg: PostgresPair | None = None
    stack: Stack | None = None
    beat = None

    def start(self, tmp) -> HA:
        self.effect = tmp / "effect.log"
        runbooks = tmp / "runbooks"
        runbooks.mkdir()
        (runbooks / "failover.yaml").write_text(runbook(self.effect))
        # Side by side, as they wait on disks and sockets: the primary (migrated) and the sentinels; then the
        # replica, the workers and beat.
        with ThreadPoolExecutor(2) as pool:
            primary = pool.submit(self._primary, tmp / "pg")
            self.redis = SentinelRedis(tmp / "redis")
            database_url = primary.result()
            replica = pool.submit(self.pg.add_replica)
            self.stack = Stack(tmp / "stack", self.redis.url(), database_url,
                               {**FAST_RECOVERY, "ERDU_RUNBOOKS_DIR": str(runbooks),
                                "ERDU_CACHE_REDIS_URL": self.redis.url(1)})
            self.stack.tmp.mkdir()
            beat = pool.submit(start_beat, self.stack)
            self.stack.start_all(("ingest", "commander", "diagnostician", "fixer", "resolver", "monitor"))
            self.beat = beat.result()
            replica.result()
        return self

    def _primary(self, directory) -> str:
        self.pg = PostgresPair(directory, replica=False)
        return self.pg.create_database("erdu")

    def burst(self, prefix: str) -> Burst:
        return Burst(self.stack.redis_url, prefix, EVENTS).start()

    def workers(self) -> set[int]:
        return {p.pid for procs in self.stack.procs.values() for p in procs if p.poll() is None}

    def log(self) -> str:
        return "".join(p.log_path.read_text(errors="replace") for procs in self.stack.procs.values() for p in procs)

    def close(self) -> None:
        if self.stack is not None:
            self.stack.stop(signal.SIGKILL)
        if self.beat is not None:
            stop_process_group(self.beat)
        if self.pg is not None:
            self.pg.destroy()
        if self.redis is not None:
            self.redis.stop()


@pytest.fixture()
def ha(tmp_path):
    made = HA()
    try:
        yield made.start(tmp_path)
    finally:
        made.close()


def settled(ha: HA, burst: Burst, fault_at: float):
    burst.join()
    wait_for(lambda: all_final(ha.stack.database_url, burst.keys), 90, 0.2, what="every incident of the burst final")
    took = round(time.monotonic() - fault_at, 1)
    result = outcome(ha.stack.database_url, burst.keys, ha.effect)
    print(f"\n{result}; all final {took} s after the fault; send retries {burst.retries}")
    return result


@pytest.mark.slow(34)
@pytest.mark.timeout(240)
def test_a_redis_master_killed_then_a_postgres_primary_stopped_mid_burst_lose_and_repeat_nothing(ha):
    workers = ha.workers()
    a_redis_master_killed_mid_burst_fails_over(ha)
    the_cache_redis_of_a_sentinel_url_is_the_current_master(ha)
    a_postgres_primary_stopped_mid_burst_is_replaced_by_its_promoted_replica(ha)
    assert ha.workers() == workers and ha.beat.poll() is None   # nobody restarted: they followed by themselves


def a_redis_master_killed_mid_burst_fails_over(ha: HA) -> None:
    burst = ha.burst("sentinel")
    burst.wait_sent(EVENTS // 3)
    old = ha.redis.kill_master()
    fault_at = time.monotonic()
    new = ha.redis.wait_promoted(old)

    result = settled(ha, burst, fault_at)
    assert (result.sent, result.lost, result.duplicated, result.stuck, result.actions_twice) == (EVENTS, 0, 0, 0, 0)
    assert sorted(set(ha.effect.read_text().split()) & set(burst.keys)) == sorted(burst.keys)   # each acted once
    promoted = redis.Redis(port=new)
    wait_for(lambda: promoted.exists(REDBEAT_PREFIX + BEAT_LOCK_KEY), 20, what="beat's lock on the new master")
    assert "Connection to broker lost" in ha.log()   # the workers did lose the old master


def the_cache_redis_of_a_sentinel_url_is_the_current_master(ha: HA) -> None:
    from erdu_tasks.fixer.actions import clear_cache
    from erdu_tasks.fixer.actions.base import ActionContext
    from erdu_tasks.redisconn import redis_client

    master = ha.redis.master_port()
    redis.Redis(port=master, db=1).set("sessions:42", "stale")
    result = clear_cache.run(clear_cache.Params(pattern="sessions:*"), ActionContext(timeout=5,
                                                                                     redis_url=ha.redis.url(1)))
    assert result.ok and result.output["deleted"] == 1, result
    assert redis_client(ha.redis.url(1)).connection_pool.get_master_address()[1] == master


def a_postgres_primary_stopped_mid_burst_is_replaced_by_its_promoted_replica(ha: HA) -> None:
    retries_before = ha.log().count("transient error, retrying")
    burst = ha.burst("pg")
    burst.wait_sent(EVENTS // 3)
    ha.pg.stop_primary()
    fault_at = time.monotonic()
    ha.pg.promote()

    result = settled(ha, burst, fault_at)
    assert (result.sent, result.lost, result.duplicated, result.stuck, result.actions_twice) == (EVENTS, 0, 0, 0, 0)
    assert sorted(set(ha.effect.read_text().split()) & set(burst.keys)) == sorted(burst.keys)
    assert ha.log().count("transient error, retrying") > retries_before   # the stop did hit running stages
