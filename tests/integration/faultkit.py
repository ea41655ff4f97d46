"""Fault-injection helpers: a Redis that can crash, a private Postgres cluster, beat, and the figures.

Every fault test counts the same things, from Postgres (the source of truth), and prints them:
incidents sent, closed, escalated, lost (sent but not in a final state) and duplicated (a second
incident row for one event, or a second close or resolve of one incident).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from bench._harness import stop_process_group  # noqa: F401   # the tests stop their processes as the benches do
from tests.conftest import RedisServer, Stack, free_port, wait_for

FINAL = ("closed", "escalated")


# ---- Redis that can be crashed and brought back with its data --------------------------------------

class CrashableRedis(RedisServer):
    """A private redis-server with an append-only file, so a restart keeps what it acknowledged."""

    def __init__(self, directory: Path, *, fsync: str = "always") -> None:
        self.fsync = fsync
        super().__init__(directory, appendonly=True, extra_args=("--appendfsync", fsync))

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def crash(self) -> None:
        """SIGKILL: no shutdown, no final save; only what was fsynced survives."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


# ---- a Postgres cluster of the test's own, so it can be stopped -------------------------------------

class PrivatePostgres:
    """initdb + pg_ctl on a free port under a temp dir (as the postgres user when run as root).

    As root, the cluster lives in a directory of its own under the system temp dir, not under pytest's:
    any pytest run that starts meanwhile resets its base directory to 0700, which would lock the
    postgres user out of a cluster it has to start again."""

    def __init__(self, directory: Path) -> None:
        if os.geteuid() == 0:
            directory = Path(tempfile.mkdtemp(prefix="erdu-test-pg-"))
        self.root = directory
        self.data = directory / "data"
        self.socket_dir = directory / "sock"
        self.log = directory / "postgres.log"
        self.port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
            # The parents of a pytest temp dir are 0700 root; postgres must be able to reach its own dir.
            for parent in self.root.parents:
                if str(parent) in ("/", "/tmp"):
                    break
                os.chmod(parent, os.stat(parent).st_mode | 0o011)
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.socket_dir}'\nfsync = off\n"
                       "max_connections = 200\nshared_buffers = 32MB\n")
        self.start()

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = list(argv)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}: {done.stdout}{done.stderr}{log}")
        return done

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Fast shutdown: every session is cut, new connections are refused."""
        done = self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop",
                         check=False)
        if done.returncode != 0 and self._running():
            raise AssertionError(f"pg_ctl stop failed: {done.stdout}{done.stderr}"
                                 + self.log.read_text(errors="replace")[-2000:])

    def _running(self) -> bool:
        return self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "status", check=False).returncode == 0

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        if os.geteuid() == 0:
            shutil.rmtree(self.root, ignore_errors=True)


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    raise AssertionError(f"{name} not found; a private Postgres cluster needs the server binaries")


# ---- beat and the monitor worker: the reconciler as it runs in production ---------------------------

def start_beat(stack: Stack) -> subprocess.Popen:
    """`erdu beat` with the stack's environment (it schedules erdu.reconcile on the monitor queue)."""
    log_path = stack.tmp / "beat.log"
    proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", "beat", "--loglevel", "INFO"],
                            env=stack.env, cwd=stack.tmp, stdout=open(log_path, "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = log_path
    wait_for(lambda: proc.poll() is None and "beat: Starting" in log_path.read_text(errors="replace"),
             60, 0.2, what="beat started")
    return proc


class Supervisor:
    """Restart whatever exited, as `erdu up` or a container runtime would, and count the restarts."""

    def __init__(self, stack: Stack, beat: subprocess.Popen | None = None) -> None:
        self.stack = stack
        self.beat = beat
        self.restarts: dict[str, int] = {}

    def check(self) -> None:
        for role in list(self.stack.procs):
            n = alive_or_restart(self.stack, role)
            if n:
                self.restarts[role] = self.restarts.get(role, 0) + n
        if self.beat is not None and self.beat.poll() is not None:
            self.beat = start_beat(self.stack)
            self.restarts["beat"] = self.restarts.get("beat", 0) + 1


def alive_or_restart(stack: Stack, role: str) -> int:
    """What a supervisor does: start the role again if its worker exited; returns how many restarts."""
    restarted = 0
    procs = stack.procs.get(role, [])
    for proc in list(procs):
        if proc.poll() is not None:
            procs.remove(proc)
            stack.start(role)
            restarted += 1
    return restarted


# ---- figures ----------------------------------------------------------------------------------------

@dataclass
class Figures:
    """What every fault test prints and asserts."""

    sent: int
    incidents: int
    closed: int
    escalated: int
    open: int
    lost: int
    duplicated: int

    def show(self, name: str) -> None:
        print(f"\n[{name}] " + ", ".join(f"{k} {v}" for k, v in asdict(self).items()), flush=True)


def rows(url: str, sql: str, params=()) -> list[dict]:
    """Run one query on a fresh connection."""
    with psycopg.connect(url, row_factory=dict_row, connect_timeout=5) as conn:
        return conn.execute(sql, params).fetchall()


def figures(url: str, sent_keys: list[str]) -> Figures:
    """Count from Postgres what became of the events sent (each carries a distinct dedup_key)."""
    incidents = rows(url, "SELECT id, status, fingerprint, error_details->>'dedup_key' AS key FROM incidents")
    by_key: dict[str, list[dict]] = {}
    for r in incidents:
        by_key.setdefault(r["key"], []).append(r)
    final_keys = {k for k, rs in by_key.items() if any(r["status"] in FINAL for r in rs)}
    lost = sum(1 for k in set(sent_keys) if k not in final_keys)
    extra_rows = sum(len(rs) - 1 for rs in by_key.values())
    twice = rows(url, """
        SELECT coalesce(sum(n - 1), 0) AS n FROM (
            SELECT incident_id, to_status, count(*) AS n FROM incident_timeline
            WHERE to_status IN ('resolved', 'closed', 'escalated') GROUP BY incident_id, to_status) t
        WHERE n > 1""")[0]["n"]
    statuses = [r["status"] for r in incidents]
    return Figures(
        sent=len(sent_keys), incidents=len(incidents), closed=statuses.count("closed"),
        escalated=statuses.count("escalated"),
        open=sum(1 for s in statuses if s not in FINAL), lost=lost, duplicated=extra_rows + int(twice),
    )


def all_final(url: str, sent: int):
    """For wait_for: every sent event has an incident in a final state."""
    r = rows(url, "SELECT count(*) FILTER (WHERE status IN ('closed','escalated')) AS done, count(*) AS n"
                  " FROM incidents")[0]
    return r["done"] >= sent and r["done"] == r["n"]


def event(key: str, message: str, **extra) -> dict:
    """An event with its own dedup_key, so each one is its own incident."""
    return {"message": message, "source": "fault-test", "dedup_key": key, **extra}


def progress(url: str, sent_keys: list[str]) -> str:
    """Status counts and the first missing events, for a test that waits too long."""
    counts = rows(url, "SELECT status, count(*) AS n FROM incidents GROUP BY status ORDER BY status")
    keys = {r["key"] for r in rows(url, "SELECT error_details->>'dedup_key' AS key FROM incidents")}
    missing = [k for k in sent_keys if k not in keys]
    return (", ".join(f"{r['status']} {r['n']}" for r in counts)
            + f"; no incident for {len(missing)} event(s) {missing[:5]}")


def stacks_of(stack: Stack) -> str:
    """Every worker process's Python stacks (py-spy dump, children included), for a test that waits too long:
    a worker that stopped consuming shows where it stands. Empty where py-spy may not attach."""
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if exe is None:
        return ""
    procs = {id(proc): proc for procs in stack.procs.values() for proc in procs}.values()
    dumps = []
    for proc in procs:
        if proc.poll() is None:
            done = subprocess.run([exe, "dump", "--subprocesses", "--pid", str(proc.pid)], capture_output=True,
                                  text=True, timeout=60)
            dumps.append(f"--- {proc.log_path.name}\n{done.stdout or done.stderr}")
    return "\n".join(dumps)


def held_messages(redis_url: str, task_name: str) -> int:
    """How many messages of a task are delivered but not acknowledged (kombu's unacked hash) or queued."""
    import json

    import redis

    client = redis.Redis.from_url(redis_url)
    held = 0
    for raw in client.hvals("unacked"):
        message = json.loads(raw)[0]
        held += message.get("headers", {}).get("task") == task_name
    return held


def elapsed(since: float) -> float:
    return round(time.monotonic() - since, 1)
