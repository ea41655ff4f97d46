"""ERDU's pipeline against a bare Celery chain, in one run, on the same private broker.

ERDU: N events, each its own incident, through ingest → assess → diagnose → fix (a noop runbook with
no validation delay) → resolve, one worker per role. Bare: N chains of four no-op tasks on four workers
with the same Celery configuration and pool settings (bench/bare_chain.py). Prints incidents/s for
both and their ratio, p50/p99 latency from send to closed, p50 latency on an idle stack (one at a
time), and peak RSS per worker role (summed over each worker's process tree).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Collection
from datetime import datetime, timezone
from pathlib import Path

import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._harness import BenchStack, write_json  # noqa: E402

ROLES = ("ingest", "commander", "diagnostician", "fixer", "resolver")
RUNBOOK = textwrap.dedent("""
    runbooks:
      - name: bench-noop
        match: {title_pattern: "(?i)bench"}
        actions:
          - action: noop
            params: {message: "nothing to do"}
        validation: {check: noop}
        limits: {max_runs: 1000000, per_seconds: 3600}
""")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def backend_cpu(database: str, exclude: Collection[int] = ()) -> float:
    """CPU seconds of the Postgres backends serving one database (the server is shared; only ours count).

    `exclude`: backend pids left out, such as the bench's own connection that polls for closed incidents
    (its work is the measurement's, not the pipeline's)."""
    total = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if cmd.startswith("postgres:") and f" {database} " in f"{cmd} " and proc.pid not in exclude:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    return total


class Sampler:
    """A background thread that calls sample() every `interval` seconds while the `with` block runs."""

    interval = 0.5

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


class PeakRss(Sampler):
    """Samples the RSS of each process tree twice a second and keeps the peak (MB); also CPU used."""

    def __init__(self, pids: dict[str, int], database: str | None = None) -> None:
        super().__init__()
        self.pids = pids
        self.database = database
        self.peak = {name: 0.0 for name in pids}
        self.cpu: dict[str, float] = {}
        self._cpu0 = {name: tree_cpu(pid) for name, pid in pids.items()}
        self._pg = 0.0

    def sample(self) -> None:
        for name, pid in self.pids.items():
            try:
                root = psutil.Process(pid)
                total = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
            except psutil.Error:
                continue
            self.peak[name] = max(self.peak[name], total / 2**20)
        if self.database:
            self._pg = max(self._pg, backend_cpu(self.database))  # backends live as long as the pools

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.cpu = {name: round(tree_cpu(pid) - self._cpu0[name], 2) for name, pid in self.pids.items()}
class QueueDepth(Sampler):
    """Samples each role queue's length (messages waiting) every 0.2 s: the deepest queue is the bottleneck."""

    interval = 0.2

    def __init__(self, redis_url: str, queues: tuple[str, ...]) -> None:
        import redis

        super().__init__()
        self.client = redis.Redis.from_url(redis_url)
        self.queues = queues
        self.samples: list[list[int]] = []

    def sample(self) -> None:
        self.samples.append([self.client.llen(q) for q in self.queues])

    def mean(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {q: round(sum(s[i] for s in self.samples) / len(self.samples), 1) for i, q in enumerate(self.queues)}


# ---- ERDU ------------------------------------------------------------------------------------------

def erdu_event(key: str) -> dict:
    return {"message": f"Bench failure {key}", "source": "bench", "service": "bench", "dedup_key": key}


# The bench's own polls read only incidents created since `since` (the index on created_at), so that with
# a large history loaded they cost what they cost on an empty one: a poll that scanned a million rows every
# 50 ms would take a core from the workers it is timing.
_EPOCH = datetime.fromtimestamp(0, timezone.utc)


def closed_times(conn: psycopg.Connection, keys: list[str], since: datetime = _EPOCH) -> dict[str, float]:
    rows = conn.execute(
        "SELECT error_details->>'dedup_key' AS key, extract(epoch FROM closed_at)::float8 AS closed"
        " FROM incidents WHERE created_at >= %s AND status = 'closed' AND error_details->>'dedup_key' = ANY(%s)",
        (since, keys)).fetchall()
    return {r["key"]: r["closed"] for r in rows}


def wait_closed(conn: psycopg.Connection, prefix: str, n: int, timeout: float, since: datetime = _EPOCH) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute("SELECT count(*) FILTER (WHERE status = 'closed') AS closed,"
                           " count(*) FILTER (WHERE status NOT IN ('closed')) AS other FROM incidents"
                           " WHERE created_at >= %s AND error_details->>'dedup_key' LIKE %s",
                           (since, prefix + "%")).fetchone()
        if row["closed"] >= n:
            return
        time.sleep(0.05)
    raise RuntimeError(f"only {row['closed']} of {n} incidents closed within {timeout:.0f} s "
                       f"({row['other']} in other states)")


def run_erdu(stack: BenchStack, n: int, idle: int, warmup: int) -> dict:
    from celery import Celery

    producer = Celery("bench-producer", broker=stack.redis_url)
    producer.conf.update(task_serializer="json", accept_content=["json"])
    conn = psycopg.connect(stack.database_url, autocommit=True, row_factory=psycopg.rows.dict_row)

    def send(key: str) -> float:
        sent = time.time()
        producer.send_task("erdu.ingest", args=(erdu_event(key),), queue="ingest")
        return sent

    for i in range(warmup):
        send(f"warm-{i}")
    wait_closed(conn, "warm-", warmup, 120)

    poller = (conn.info.backend_pid,)
    pg0 = backend_cpu(stack.db_name, poller)
    with PeakRss({**{role: stack.workers[role].pid for role in ROLES}, "redis-server": stack.redis.pid},
                 stack.db_name) as rss, QueueDepth(stack.redis_url, ROLES) as depth:
        keys = [f"load-{i}" for i in range(n)]
        sent = {key: send(key) for key in keys}
        wait_closed(conn, "load-", n, max(300, n / 2))
    rss.cpu["postgres"] = round(backend_cpu(stack.db_name, poller) - pg0, 2)
    closed = closed_times(conn, keys)
    latency = [closed[k] - sent[k] for k in keys]
    rate = n / (max(closed.values()) - min(sent.values()))

    idle_latency = []
    for i in range(idle):
        key = f"idle-{i}"
        at = send(key)
        wait_closed(conn, key, 1, 60)
        idle_latency.append(closed_times(conn, [key])[key] - at)
        time.sleep(0.1)
    conn.close()
    return {"rate": rate, "p50": percentile(latency, 0.5), "p99": percentile(latency, 0.99),
            "idle_p50": percentile(idle_latency, 0.5), "peak_rss_mb": rss.peak, "cpu_s": rss.cpu,
            "mean_queue_depth": depth.mean()}


# ---- bare chain ------------------------------------------------------------------------------------

def start_bare(stack: BenchStack) -> dict[str, subprocess.Popen]:
    from bench.bare_chain import HOPS

    procs = {}
    for hop in HOPS:
        log = open(stack.tmp / f"bare-{hop}.log", "ab")
        procs[hop] = subprocess.Popen([sys.executable, "-m", "bench.bare_chain", hop], env=stack.env, cwd=ROOT,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    for hop, proc in procs.items():
        deadline = time.monotonic() + 60
        while not stack_ready(stack, f"bare-{hop}"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((stack.tmp / f"bare-{hop}.log").read_text()[-2000:])
            time.sleep(0.2)
    return procs


def stack_ready(stack: BenchStack, node: str) -> bool:
    import socket

    from celery import Celery

    try:
        return bool(Celery(broker=stack.redis_url).control.ping(destination=[f"{node}@{socket.gethostname()}"],
                                                                 timeout=0.5))
    except Exception:
        return False


def run_bare(stack: BenchStack, n: int, idle: int, warmup: int) -> dict:
    import redis

    from bench import bare_chain

    r = redis.Redis.from_url(stack.redis_url)
    producer = bare_chain.make_app(stack.redis_url)

    def wait_done(count: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while r.llen(bare_chain.DONE_KEY) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {r.llen(bare_chain.DONE_KEY)} of {count} chains finished")
            time.sleep(0.02)
        items = [json.loads(x) for x in r.lrange(bare_chain.DONE_KEY, 0, -1)]
        r.delete(bare_chain.DONE_KEY)
        return items

    procs = start_bare(stack)
    try:
        for i in range(warmup):
            bare_chain.send(producer, f"warm-{i}")
        wait_done(warmup, 120)
        with PeakRss({**{f"bare-{hop}": p.pid for hop, p in procs.items()}, "redis-server": stack.redis.pid}) as rss:
            for i in range(n):
                bare_chain.send(producer, f"load-{i}")
            items = wait_done(n, max(300, n / 2))
        latency = [x["done"] - x["sent"] for x in items]
        rate = n / (max(x["done"] for x in items) - min(x["sent"] for x in items))
        idle_latency = []
        for i in range(idle):
            bare_chain.send(producer, f"idle-{i}")
            item = wait_done(1, 60)[0]
            idle_latency.append(item["done"] - item["sent"])
            time.sleep(0.1)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs.values():
            proc.wait(30)
    return {"rate": rate, "p50": percentile(latency, 0.5), "p99": percentile(latency, 0.99),
            "idle_p50": percentile(idle_latency, 0.5), "peak_rss_mb": rss.peak, "cpu_s": rss.cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="incidents (and bare chains) per run (default 2,000)")
    parser.add_argument("--idle", type=int, default=20, help="one-at-a-time samples for the idle latency")
    parser.add_argument("--warmup", type=int, default=20, help="untimed incidents first (imports, connections)")
    parser.add_argument("--json", dest="json_path", help="write every figure to this JSON file")
    args = parser.parse_args()

    runbooks = Path(os.environ.get("TMPDIR", "/tmp")) / f"erdu-bench-runbooks-{os.getpid()}"
    runbooks.mkdir(exist_ok=True)
    (runbooks / "bench.yaml").write_text(RUNBOOK)
    # No monitor worker and no beat: nothing but the pipeline runs, so the reconciler cannot re-drive.
    with BenchStack({"ERDU_RUNBOOKS_DIR": str(runbooks)}) as stack:
        bare = run_bare(stack, args.n, args.idle, args.warmup)
        for role in ROLES:
            stack.start(role)
        erdu = run_erdu(stack, args.n, args.idle, args.warmup)
    figures = {
        "n": args.n,
        "erdu": erdu,
        "bare_chain": bare,
        "ratio": erdu["rate"] / bare["rate"],
        # The targets of the pipeline work: throughput, CPU and idle latency, each against the bare chain.
        "targets": {"ratio_at_least": 0.7, "cpu_ms_per_incident_at_most": 20.0, "idle_p50_ratio_at_most": 1.5},
        "cpu_ms_per_incident": 1000 * sum(erdu["cpu_s"].values()) / args.n,
        "idle_p50_ratio": erdu["idle_p50"] / bare["idle_p50"] if bare["idle_p50"] else float("inf"),
        "cpu_count": os.cpu_count(),
        "load_average_after": os.getloadavg(),   # a shared machine: other work competes for the same cores
    }
    print("rate: incidents/s; p50, p99: ingest-to-closed seconds under load; idle_p50: seconds, one at a time")
    print(f"{'':14}{'rate':>12}{'p50':>9}{'p99':>9}{'idle_p50':>12}")
    for name, f in (("ERDU", erdu), ("bare chain", bare)):
        print(f"{name:14}{f['rate']:12.1f}{f['p50']:9.3f}{f['p99']:9.3f}{f['idle_p50']:12.3f}")
    targets = figures["targets"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "not met"

    print(f"ratio ERDU / bare chain: {figures['ratio']:.2f} (target >= {targets['ratio_at_least']}: "
          f"{verdict(figures['ratio'] >= targets['ratio_at_least'])}); "
          f"CPU per incident {figures['cpu_ms_per_incident']:.1f} ms (target <= "
          f"{targets['cpu_ms_per_incident_at_most']:.0f} ms: "
          f"{verdict(figures['cpu_ms_per_incident'] <= targets['cpu_ms_per_incident_at_most'])}); "
          f"idle p50 {erdu['idle_p50'] * 1000:.0f} ms, {figures['idle_p50_ratio']:.1f}x the bare chain's (target <= "
          f"{targets['idle_p50_ratio_at_most']}x: {verdict(figures['idle_p50_ratio'] <= targets['idle_p50_ratio_at_most'])}); "
          f"load average {' '.join(f'{x:.1f}' for x in figures['load_average_after'])} on {os.cpu_count()} cores")
    for name, f in (("ERDU", erdu), ("bare chain", bare)):
        per = ", ".join(f"{k} {1000 * v / args.n:.1f}" for k, v in f["cpu_s"].items())
        print(f"CPU ms per incident, {name}: {per}; total {1000 * sum(f['cpu_s'].values()) / args.n:.1f}")
    depth = ", ".join(f"{k} {v:.0f}" for k, v in erdu["mean_queue_depth"].items())
    print(f"mean queue depth during the ERDU run: {depth}")
    print("peak RSS MB: " + ", ".join(f"{k} {v:.0f}" for k, v in erdu["peak_rss_mb"].items() if k in ROLES)
          + "; bare chain: " + ", ".join(f"{k} {v:.0f}" for k, v in bare["peak_rss_mb"].items() if k != "redis-server"))
    write_json(args.json_path, figures)


if __name__ == "__main__":
    main()
