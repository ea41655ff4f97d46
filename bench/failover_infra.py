"""Failover of ERDU's infrastructure: the active beat killed, a Redis Sentinel failover, a Postgres promotion.

Each scenario runs real `erdu worker` and `erdu beat` processes on private servers (a Redis master, its replica
and three sentinels; a Postgres primary and its streaming replica, made with the machine's binaries), sends a
burst of events whose runbook action notes every run in a file, injects the fault mid-burst and counts, from
Postgres and that file, what became of every event (`Outcome`). The pieces (SentinelRedis, PostgresPair,
Processes, Burst, outcome) are what the suite's failover tests use too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from bench._harness import PG_ADMIN_URL, free_port

FINAL = ("closed", "escalated")
MASTER_NAME = "erdu"

# Shortened deadlines, so a hand-off lost with a dying master is re-driven within seconds.
FAST_RECOVERY = {"ERDU_STAGE_DEADLINE_SECONDS": "3", "ERDU_RECONCILE_INTERVAL_SECONDS": "1",
                 "ERDU_VISIBILITY_TIMEOUT": "30"}


def wait_until(check: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """Poll check() until it is truthy; RuntimeError after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


# ---- Redis: a master, a replica and three sentinels -------------------------------------------------

class SentinelRedis:
    """A private Redis master and replica watched by private sentinels (quorum 2, master down after 500 ms)."""

    def __init__(self, directory: Path, *, sentinels: int = 3, down_after_ms: int = 500) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.servers: dict[int, subprocess.Popen] = {}
        self.sentinels: list[tuple[int, subprocess.Popen]] = []
        try:
            self._start(sentinels, down_after_ms)
        except BaseException:
            self.stop()
            raise

    def _start(self, sentinels: int, down_after_ms: int) -> None:
        master = self._server()
        self._server(replica_of=master)
        for _ in range(sentinels):
            port = free_port()
            conf = self.dir / f"sentinel-{port}.conf"   # a sentinel rewrites its own file
            conf.write_text(textwrap.dedent(f"""\
                port {port}
                bind 127.0.0.1
                dir {self.dir}
                sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2
                sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}
                sentinel failover-timeout {MASTER_NAME} 5000
                sentinel parallel-syncs {MASTER_NAME} 1
                """))
            proc = subprocess.Popen([shutil.which("redis-sentinel") or "redis-sentinel", str(conf)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.sentinels.append((port, proc))
            wait_until(lambda: _port_open(port), 10, "a sentinel")
        wait_until(self._replica_known, 20, "the sentinels seeing master and replica")
        # The sentinels count a replica as soon as it connects, before it holds any data: a master killed in
        # between takes every write with it, and the promoted replica starts empty.
        wait_until(self._replica_synced, 20, "the replica in sync with its master")

    def _server(self, replica_of: int | None = None) -> int:
        port = free_port()
        argv = [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port", str(port),
                "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--dbfilename", f"dump-{port}.rdb",
                "--loglevel", "warning", "--repl-diskless-sync-delay", "0"]   # not 5 s for replicas to come
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        self.servers[port] = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _port_open(port), 10, "a redis-server")
        return port

    def _sentinel(self, port: int):
        import redis

        return redis.Redis(port=port, socket_timeout=1, decode_responses=True)

    def _replica_known(self) -> bool:
        try:
            return all(self._sentinel(p).sentinel_master(MASTER_NAME).get("num-slaves", 0) >= 1
                       for p, _ in self.sentinels)
        except Exception:
            return False

    def _replica_synced(self) -> bool:
        import redis

        master = self.master_port()
        try:
            return all(redis.Redis(port=port, socket_timeout=1, decode_responses=True)
                       .info("replication").get("master_link_status") == "up"
                       for port in self.servers if port != master)
        except redis.RedisError:
            return False

    def url(self, db: int = 0) -> str:
        """ERDU's sentinel:// URL for this group."""
        hosts = ";".join(f"127.0.0.1:{p}" for p, _ in self.sentinels)
        return f"sentinel://{hosts}/{MASTER_NAME}/{db}"

    def master_port(self) -> int | None:
        """The master's port as a majority of the sentinels say it (None while they disagree)."""
        said = []
        for port, _ in self.sentinels:
            try:
                addr = self._sentinel(port).sentinel_get_master_addr_by_name(MASTER_NAME)
                said.append(int(addr[1]) if addr else None)
            except Exception:
                said.append(None)
        best = max(set(said), key=said.count)
        return best if best is not None and said.count(best) * 2 > len(said) else None

    def direct_url(self, db: int = 0) -> str:
        """redis:// to the current master (for looking at queues)."""
        return f"redis://127.0.0.1:{self.master_port()}/{db}"

    def kill_master(self) -> int:
        """SIGKILL the master; returns its port."""
        port = self.master_port()
        assert port is not None
        proc = self.servers[port]
        proc.kill()
        proc.wait(10)
        return port

    def wait_promoted(self, old: int, timeout: float = 30) -> int:
        """Wait until the sentinels name a new master that answers as one; returns its port."""
        import redis

        def promoted() -> int | None:
            port = self.master_port()
            if port in (None, old):
                return None
            try:
                role = redis.Redis(port=port, socket_timeout=0.5).role()[0]
            except redis.RedisError:
                return None
            return port if role in (b"master", "master") else None

        return int(wait_until(promoted, timeout, "a replica promoted"))

    def stop(self) -> None:
        for proc in [*self.servers.values(), *(p for _, p in self.sentinels)]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.servers.values(), *(p for _, p in self.sentinels)]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# ---- Postgres: a primary and its streaming replica ---------------------------------------------------

def pg_bin(name: str) -> str:
    """A Postgres server binary: on PATH, else the newest under /usr/lib/postgresql."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise RuntimeError(f"{name} not found; a private Postgres cluster needs the server binaries")


class PostgresPair:
    """A private primary (initdb) and a streaming replica of it (pg_basebackup -R), on free ports.

    As root the clusters run as the postgres user, in a directory of their own under the system temp dir.
    With replica=False only the primary starts; add_replica() makes the replica later (say once the primary's
    database is migrated and ERDU is starting on it).
    """

    def __init__(self, directory: Path, *, replica: bool = True) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="erdu-pg-pair-")) if os.geteuid() == 0 else directory
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        self.ports = {"primary": free_port(), "replica": free_port()}
        try:
            self._start_primary()
            if replica:
                self.add_replica()
        except BaseException:
            self.destroy()
            raise

    def _start_primary(self) -> None:
        primary = self.root / "primary"
        self._run(pg_bin("initdb"), "-D", str(primary), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        self._configure(primary, self.ports["primary"])
        self._ctl(primary, "start")

    def add_replica(self) -> None:
        """A streaming replica of the primary as it is now (pg_basebackup -R), started."""
        replica = self.root / "replica"
        self._run(pg_bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(self.ports["primary"]), "-U", "postgres",
                  "-D", str(replica), "-R", "-X", "stream", "--no-sync", "--checkpoint=fast")
        self._configure(replica, self.ports["replica"])
        self._ctl(replica, "start")
        # Started is not yet streaming: a primary stopped before its replica connects takes the commits since
        # the base backup with it.
        wait_until(self._streaming, 30, "the replica streaming from the primary")

    def _streaming(self) -> bool:
        try:
            with psycopg.connect(self.url_of("primary"), connect_timeout=2) as conn:
                return conn.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").fetchone()[0] > 0
        except psycopg.Error:
            return False

    def url_of(self, server: str, database: str = "postgres") -> str:
        """A URL of one of the two servers ("primary" or "replica")."""
        return f"postgresql://postgres@127.0.0.1:{self.ports[server]}/{database}"

    def _configure(self, data: Path, port: int) -> None:
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.root}'\n"
                       "fsync = off\nmax_connections = 100\nshared_buffers = 32MB\n")

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}: {done.stdout}{done.stderr}")
        return done

    def _ctl(self, data: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self._run(pg_bin("pg_ctl"), "-D", str(data), "-l", str(data.parent / f"{data.name}.log"), "-w",
                         "-t", "60", *args, check=check)

    def url(self, database: str = "postgres") -> str:
        """A libpq multi-host URL: whichever of the two accepts writes."""
        hosts = ",".join(f"127.0.0.1:{self.ports[n]}" for n in ("primary", "replica"))
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write"

    def create_database(self, name: str) -> str:
        """Create a database on the primary and apply ERDU's migrations; its multi-host URL."""
        from erdu_tasks.store.migrate import migrate

        url = self.url(name)
        migrate(url)   # creates it through the multi-host URL too
        return url

    def stop_primary(self) -> None:
        """Fast shutdown of the primary (sessions cut; the replica has every committed transaction)."""
        self._ctl(self.root / "primary", "-m", "fast", "stop")

    def promote(self) -> None:
        """Promote the replica (pg_ctl promote, waiting until it accepts writes)."""
        self._ctl(self.root / "replica", "promote")

    def destroy(self) -> None:
        for name in ("primary", "replica"):
            if (self.root / name).exists():
                self._ctl(self.root / name, "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


# ---- ERDU's processes -------------------------------------------------------------------------------

ROLES = "ingest,commander,diagnostician,fixer,resolver,monitor"


def runbook(effect: Path) -> str:
    """A runbook for the burst's events whose action appends the incident's host (one per event) to `effect`."""
    return textwrap.dedent(f"""
        runbooks:
          - name: failover-remedy
            match: {{title_pattern: "(?i)failover drill"}}
            actions:
              - action: run_command
                params: {{argv: ["sh", "-c", 'echo "$1" >> {effect}', "sh", "{{host}}"]}}
            validation: {{check: noop}}
            limits: {{max_runs: 100000, per_seconds: 3600}}
        """)


class Processes:
    """`erdu worker` and `erdu beat` processes on the given Redis and Postgres URLs; all stopped by stop()."""

    def __init__(self, directory: Path, redis_url: str, database_url: str, extra_env: dict[str, str] | None = None):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.effect = self.dir / "effect.log"
        (self.dir / "runbooks").mkdir(exist_ok=True)
        (self.dir / "runbooks" / "failover.yaml").write_text(runbook(self.effect))
        self.redis_url = redis_url
        self.database_url = database_url
        self.env = {**os.environ, "ERDU_REDIS_URL": redis_url, "ERDU_DATABASE_URL": database_url,
                    "ERDU_REPORTS_DIR": str(self.dir / "reports"), "ERDU_ALERTS_DIR": str(self.dir / "alerts"),
                    "ERDU_STATE_DIR": str(self.dir / "var"), "ERDU_RUNBOOKS_DIR": str(self.dir / "runbooks"),
                    "PYTHONUNBUFFERED": "1", **FAST_RECOVERY, **(extra_env or {})}
        self.env.pop("ERDU_CONFIG", None)
        self.procs: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = self.dir / f"{name}.log"
        proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", *argv], env=self.env, cwd=self.dir,
                                stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_path = log  # type: ignore[attr-defined]
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def _ready(self, name: str, marker: str) -> bool:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {self.log(name)[-2000:]}")
        return marker in self.log(name)

    def start_workers(self, name: str = "workers", wait: bool = True) -> subprocess.Popen:
        """Every role in one process (its own queue per role)."""
        proc = self._spawn(name, ["worker", ROLES, "--hostname", name, "--loglevel", "INFO"])
        if wait:
            self.wait_workers(name)
        return proc

    def wait_workers(self, name: str = "workers", timeout: float = 90) -> None:
        wait_until(lambda: self._ready(name, "ready."), timeout, f"{name} ready", 0.2)

    def start_beat(self, name: str = "beat", wait: bool = True) -> subprocess.Popen:
        proc = self._spawn(name, ["beat", "--loglevel", "INFO"])
        if wait:
            wait_until(lambda: self._ready(name, "beat: Starting"), 60, f"{name} started", 0.2)
        return proc

    def kill(self, name: str) -> None:
        """SIGKILL a process group we started."""
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(20)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(20)
        self.procs.clear()


# ---- the burst and its outcome ------------------------------------------------------------------------

def event(key: str) -> dict:
    """One event of the burst: its own dedup_key (one incident each) and host (the action's note)."""
    return {"message": f"Failover drill {key}", "source": "failover-bench", "dedup_key": key, "host": key,
            "service": "drill"}


class Burst:
    """Sends events at a steady rate from a thread, as a producer would: a send that fails is retried."""

    def __init__(self, redis_url: str, prefix: str, n: int, rate: float = 20.0) -> None:
        from erdu_tasks.client.producer import Client

        self.client = Client(redis_url, timeout=2.0)
        self.keys = [f"{prefix}-{i}" for i in range(n)]
        self.rate = rate
        self.sent: list[str] = []
        self.retries = 0
        self.finished_at: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Burst":
        self.thread.start()
        return self

    def _run(self) -> None:
        from erdu_tasks.client.producer import ClientError

        for key in self.keys:
            deadline = time.monotonic() + 60
            while True:
                try:
                    self.client.send(event(key))
                    break
                except ClientError:
                    if time.monotonic() > deadline:
                        raise
                    self.retries += 1
                    time.sleep(0.2)
            self.sent.append(key)
            time.sleep(1 / self.rate)
        self.finished_at = time.monotonic()

    def wait_sent(self, count: int, timeout: float = 60) -> None:
        wait_until(lambda: len(self.sent) >= count, timeout, f"{count} events sent")

    def join(self, timeout: float = 120) -> None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise RuntimeError("the burst did not finish sending")


def rows(url: str, sql: str, params=()) -> list[dict]:
    with psycopg.connect(url, row_factory=dict_row, connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


@dataclass
class Outcome:
    """What became of a burst: counted in Postgres (incidents, timeline) and in the action's notes."""

    sent: int
    lost: int            # sent, but no incident in a final state
    duplicated: int      # a second incident for one event, or a second close / escalation of one
    stuck: int           # an incident of the burst not (yet) final
    actions_twice: int   # events whose action ran more than once
    final_seconds: float | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        data = asdict(self)
        data.update(data.pop("extra"))
        return data


def outcome(database_url: str, keys: list[str], effect: Path) -> Outcome:
    """Count what became of the events `keys` (each its own dedup_key)."""
    found = rows(database_url, "SELECT id, status, error_details->>'dedup_key' AS key FROM incidents"
                               " WHERE error_details->>'dedup_key' = ANY(%s)", (keys,))
    by_key: dict[str, list[dict]] = {}
    for r in found:
        by_key.setdefault(r["key"], []).append(r)
    final = {k for k, rs in by_key.items() if any(r["status"] in FINAL for r in rs)}
    twice = rows(database_url, """
        SELECT coalesce(sum(n - 1), 0) AS n FROM (
            SELECT t.incident_id, t.to_status, count(*) AS n FROM incident_timeline t
            WHERE t.incident_id = ANY(%s) AND t.to_status IN ('resolved', 'closed', 'escalated')
            GROUP BY t.incident_id, t.to_status) s WHERE n > 1""", ([r["id"] for r in found],))[0]["n"]
    notes = effect.read_text().split() if effect.exists() else []
    runs = {k: notes.count(k) for k in set(notes) & set(keys)}
    return Outcome(sent=len(keys), lost=sum(1 for k in keys if k not in final),
                   duplicated=sum(len(rs) - 1 for rs in by_key.values()) + int(twice),
                   stuck=sum(1 for r in found if r["status"] not in FINAL),
                   actions_twice=sum(1 for n in runs.values() if n > 1))


def all_final(database_url: str, keys: list[str]) -> bool:
    """Every event of the burst has an incident, and every one of them is final."""
    r = rows(database_url, "SELECT count(*) FILTER (WHERE status IN ('closed','escalated')) AS done, count(*) AS n"
                           " FROM incidents WHERE error_details->>'dedup_key' = ANY(%s)", (keys,))[0]
    return r["n"] >= len(keys) and r["done"] == r["n"]


def settle(procs: Processes, burst: Burst, fault_at: float, timeout: float) -> Outcome:
    """Wait for the burst to be sent and every incident final; the outcome with seconds since the fault."""
    burst.join()
    wait_until(lambda: all_final(procs.database_url, burst.keys), timeout, "every incident final", 0.25)
    done_at = time.monotonic()
    took = round(done_at - fault_at, 1)
    time.sleep(1.0)   # a late redelivery would show as a second close or a second action
    result = outcome(procs.database_url, burst.keys, procs.effect)
    result.final_seconds = took
    result.extra.update(send_retries=burst.retries,
                        after_last_send_seconds=round(done_at - (burst.finished_at or done_at), 1))
    return result


# ---- the scenarios -------------------------------------------------------------------------------------

def _migrate(url: str) -> None:
    from erdu_tasks.store.migrate import migrate

    migrate(url)   # creates the database too


def _drop(url: str) -> None:
    name = url.rsplit("/", 1)[1].split("?")[0]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _redis(directory: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port",
                             str(port), "--save", "", "--appendonly", "no", "--dir", str(directory)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: _port_open(port), 10, "redis-server")
    return proc, f"redis://127.0.0.1:{port}/0"


def beat_kill(events: int) -> dict:
    """Two beats; the active one SIGKILLed mid-burst.

    Seconds to takeover (the standby logs that it holds the lock) and to the first reconcile pass the standby
    sends (the reconciler is what re-drives lost work, so it is what a dead beat stops).
    """
    import secrets

    tmp = Path(tempfile.mkdtemp(prefix="erdu-failover-beat-"))
    redis_proc, redis_url = _redis(tmp)
    db = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/erdu_failover_{secrets.token_hex(4)}"
    procs = Processes(tmp / "run", redis_url, db)
    try:
        _migrate(db)
        procs.start_workers()
        procs.start_beat("beat-a")
        wait_until(lambda: "beat: Acquired lock" in procs.log("beat-a"), 30, "beat-a holding the lock")
        procs.start_beat("beat-b")
        burst = Burst(redis_url, "beat", events).start()
        burst.wait_sent(events // 3)
        procs.kill("beat-a")
        fault_at = time.monotonic()
        seen = first_times({
            "takeover_seconds": lambda: "beat: Acquired lock" in procs.log("beat-b"),
            "first_reconcile_seconds": lambda: "(erdu.reconcile)" in procs.log("beat-b"),
            "final_seconds": lambda: not burst.thread.is_alive() and all_final(db, burst.keys),
        }, fault_at, 180)
        result = settle(procs, burst, fault_at, 10)
        result.final_seconds = seen.pop("final_seconds")
        result.extra.update(seen, after_last_send_seconds=round(
            result.final_seconds - ((burst.finished_at or fault_at) - fault_at), 1))
        return result.as_dict()
    finally:
        procs.stop()
        redis_proc.terminate()
        redis_proc.wait(10)
        _drop(db)
        shutil.rmtree(tmp, ignore_errors=True)


def first_times(conditions: dict[str, Callable[[], object]], since: float, timeout: float) -> dict[str, float]:
    """Seconds from `since` until each condition first held (polled together every 50 ms)."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(conditions):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {sorted(set(conditions) - set(seen))}")
        for name, check in conditions.items():
            if name not in seen and check():
                seen[name] = round(time.monotonic() - since, 1)
        time.sleep(0.05)
    return seen


def sentinel_failover(events: int) -> dict:
    """Redis master SIGKILLed mid-burst; the sentinels promote the replica; workers and beat follow."""
    import secrets

    tmp = Path(tempfile.mkdtemp(prefix="erdu-failover-sentinel-"))
    redis = SentinelRedis(tmp / "redis")
    db = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/erdu_failover_{secrets.token_hex(4)}"
    procs = Processes(tmp / "run", redis.url(), db, {"ERDU_CACHE_REDIS_URL": redis.url(1)})
    try:
        _migrate(db)
        procs.start_workers()
        procs.start_beat()
        burst = Burst(redis.url(), "sentinel", events).start()
        burst.wait_sent(events // 3)
        old = redis.kill_master()
        fault_at = time.monotonic()
        redis.wait_promoted(old)
        promoted = round(time.monotonic() - fault_at, 1)
        result = settle(procs, burst, fault_at, 180)
        result.extra["promoted_seconds"] = promoted
        return result.as_dict()
    finally:
        procs.stop()
        redis.stop()
        _drop(db)
        shutil.rmtree(tmp, ignore_errors=True)


def postgres_promotion(events: int) -> dict:
    """Postgres primary stopped mid-burst, the replica promoted; workers reconnect through the multi-host URL."""
    tmp = Path(tempfile.mkdtemp(prefix="erdu-failover-pg-"))
    redis_proc, redis_url = _redis(tmp)
    try:
        pair = PostgresPair(tmp / "pg")
    except BaseException:
        redis_proc.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        db = pair.create_database("erdu")
        procs = Processes(tmp / "run", redis_url, db)
        try:
            procs.start_workers()
            procs.start_beat()
            burst = Burst(redis_url, "pg", events).start()
            burst.wait_sent(events // 3)
            pair.stop_primary()
            fault_at = time.monotonic()
            pair.promote()
            promoted = round(time.monotonic() - fault_at, 1)
            result = settle(procs, burst, fault_at, 180)
            result.extra.update(promoted_seconds=promoted,
                                task_retries=procs.log("workers").count("transient error, retrying"))
            return result.as_dict()
        finally:
            procs.stop()
    finally:
        pair.destroy()
        redis_proc.terminate()
        redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


SCENARIOS: dict[str, Callable[[int], dict]] = {
    "beat-kill": beat_kill,
    "sentinel-failover": sentinel_failover,
    "postgres-promotion": postgres_promotion,
}
