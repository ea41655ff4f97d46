"""Shared fixtures: a private Redis server, a private Postgres database and real worker processes."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Two runbooks many tests use: one that fixes database incidents, one that always fails.
NOOP_RUNBOOK = textwrap.dedent("""
    runbooks:
      - name: reset-db-connections
        description: Reset the pool of database connections.
        match:
          tags: [database]
        diagnosis_hint: The database connection pool holds dead connections.
        actions:
          - action: noop
            params: {message: "connection pool reset"}
        validation: {check: noop}
        limits: {max_runs: 1000, per_seconds: 3600}
      - name: always-broken
        match:
          title_pattern: "(?i)unfixable"
        actions:
          - action: noop
            params: {fail: true}
        limits: {max_runs: 1000, per_seconds: 3600}
""")

PG_ADMIN_URL = os.environ.get("ERDU_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], object], timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    """Poll check() until it returns something truthy; fail the test after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


class RedisServer:
    """A private redis-server on a free port, killed at the end."""

    def __init__(self, tmp: Path, *, appendonly: bool = False, extra_args: tuple[str, ...] = ()) -> None:
        self.port = free_port()
        self.dir = tmp
        self.dir.mkdir(parents=True, exist_ok=True)
        self.appendonly = appendonly
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server must be on PATH for the integration tests"
        self.proc = subprocess.Popen(
            [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--dir", str(self.dir),
             "--appendonly", "yes" if self.appendonly else "no", "--daemonize", "no", "--loglevel", "warning",
             *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self._up, 10, what="private redis")

    def _up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def create_database() -> str:
    name = f"erdu_test_{secrets.token_hex(5)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    from erdu_tasks.store.migrate import migrate

    url = create_database()
    migrate(url)
    yield url
    drop_database(url)


@pytest.fixture()
def fresh_database_url() -> Iterator[str]:
    """A database of the test's own, migrated, dropped afterwards."""
    from erdu_tasks.store.migrate import migrate

    url = create_database()
    migrate(url)
    yield url
    drop_database(url)


@pytest.fixture()
def db(database_url) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        yield conn


class Stack:
    """Real `erdu worker ROLE` processes against a private Redis and a private database."""

    def __init__(self, tmp: Path, redis_url: str, database_url: str, extra_env: dict[str, str] | None = None):
        self.tmp = tmp
        self.redis_url = redis_url
        self.database_url = database_url
        self.reports = tmp / "reports"
        self.alerts = tmp / "alerts"
        self.env = {
            **os.environ,
            "ERDU_REDIS_URL": redis_url,
            "ERDU_DATABASE_URL": database_url,
            "ERDU_REPORTS_DIR": str(self.reports),
            "ERDU_ALERTS_DIR": str(self.alerts),
            "ERDU_STATE_DIR": str(tmp / "var"),
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.env.pop("ERDU_CONFIG", None)
        self.procs: dict[str, list[subprocess.Popen]] = {}
        self._client = None

    def start(self, role: str, *extra: str, wait: bool = True) -> subprocess.Popen:
        self._started = getattr(self, "_started", 0) + 1
        log_path = self.tmp / f"{role}-{self._started}.log"
        log = open(log_path, "ab")
        proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", "worker", role, "--loglevel", "INFO", *extra],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp,
                                start_new_session=True)
        proc.log_path = log_path
        self.procs.setdefault(role, []).append(proc)
        if wait:
            self.wait_ready(role, proc)
        return proc

    def wait_ready(self, role: str, proc: subprocess.Popen, timeout: float = 60) -> None:
        def ready() -> bool:
            assert proc.poll() is None, f"worker {role} exited: " + proc.log_path.read_text()[-2000:]
            return "ready." in proc.log_path.read_text(errors="replace")

        wait_for(ready, timeout, 0.2, what=f"worker {role} ready")

    def start_all(self, roles=("ingest", "commander", "diagnostician", "fixer", "resolver")) -> None:
        procs = [(r, self.start(r, wait=False)) for r in roles]
        for role, proc in procs:
            self.wait_ready(role, proc)

    def kill(self, role: str, sig: int = signal.SIGKILL) -> None:
        for proc in self.procs.pop(role, []):
            if proc.poll() is None:
                os.killpg(proc.pid, sig)
                proc.wait(30)

    def stop(self) -> None:
        for role in list(self.procs):
            for proc in self.procs[role]:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in self.procs[role]:
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()

    @property
    def client(self):
        """A plain Celery client, as any producer would use."""
        if self._client is None:
            from celery import Celery

            self._client = Celery("test-producer", broker=self.redis_url)
            self._client.conf.update(task_serializer="json", accept_content=["json"])
        return self._client

    def send_event(self, payload, **options) -> str:
        return self.client.send_task("erdu.ingest", args=(payload,), queue="ingest", **options).id

    def erdu(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "erdu_tasks.cli", *args], env=self.env, cwd=self.tmp,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def stack_factory(tmp_path, redis_server) -> Iterator[Callable[..., Stack]]:
    """Build stacks on a fresh database and a fresh Redis db number each."""
    made: list[tuple[Stack, str]] = []
    counter = iter(range(1, 16))

    def make(extra_env: dict[str, str] | None = None, redis_url: str | None = None) -> Stack:
        from erdu_tasks.store.migrate import migrate

        url = create_database()
        migrate(url)
        r_url = redis_url or f"redis://127.0.0.1:{redis_server.port}/{next(counter)}"
        import redis as redis_lib

        redis_lib.Redis.from_url(r_url).flushdb()
        stack = Stack(tmp_path / f"stack{len(made)}", r_url, url, extra_env)
        stack.tmp.mkdir(parents=True, exist_ok=True)
        made.append((stack, url))
        return stack

    yield make
    for stack, url in made:
        stack.stop()
        drop_database(url)


def incident_rows(database_url: str, sql: str = "SELECT * FROM incidents", params=()) -> list[dict]:
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(sql, params).fetchall()
