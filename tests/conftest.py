"""Shared fixtures: a private Redis server, a private Postgres database and real worker processes."""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Keep the compiled, assertion-rewritten test modules in __pycache__ even where PYTHONDONTWRITEBYTECODE is
# set: otherwise each of the five pytest processes of `make test` (the controller and four xdist workers)
# rewrites and compiles every test module again on every run, about 4 s of CPU each.
sys.dont_write_bytecode = False
# The same for the processes the tests start: a worker would otherwise compile, on each of its ~110 starts, the
# modules no pytest process had imported yet (about 0.2 s of CPU a start in a fresh checkout).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
# Every process a test starts runs this checkout's code, whichever checkout the virtualenv was installed from.
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
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


def _url_of(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


_template: dict[str, str] = {}
_template_lock = threading.Lock()


def _template_name() -> str:
    """This test process's migrated template database, made on first use (one per xdist worker)."""
    with _template_lock:
        if "name" not in _template:
            from erdu_tasks.store.migrate import migrate

            worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
            name = f"erdu_template_{worker}_{secrets.token_hex(4)}"
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            migrate(_url_of(name))
            _template["name"] = name
        return _template["name"]


def _copy_of_the_template() -> str:
    name = f"erdu_test_{secrets.token_hex(5)}"
    template = _template_name()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return _url_of(name)


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class _Spares:
    """Threads beside the tests: one copies the template ahead of need, DROPPERS drop finished databases, so a
    test waits for neither (CREATE and DROP DATABASE each take a second or more on a busy machine).

    Postgres 15's DROP DATABASE waits for a checkpoint, which drops running at the same time share. One thread
    doing copies and drops fell behind: 28-85 drops per test process were left for the session's end, 6-9 s
    there; with drops of their own, three at a time, 9-56 were left, 1-8 s."""

    DROPPERS = 3

    def __init__(self) -> None:
        self.ready: queue.Queue[str] = queue.Queue()
        self.spares: queue.Queue[bool] = queue.Queue()
        self.drops: queue.Queue[str | None] = queue.Queue()
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()

    def _make_spares(self) -> None:
        while self.spares.get():
            try:
                self.ready.put(_copy_of_the_template())
            except psycopg.Error:
                pass   # a spare not made is made when needed

    def _drop(self) -> None:
        while (url := self.drops.get()) is not None:
            try:
                _drop_patiently(url)
            except psycopg.Error:
                pass   # a database not dropped stays (named erdu_test_*)

    def _started(self) -> None:
        with self.lock:
            if not self.threads:
                self.threads = [threading.Thread(target=self._make_spares, name="test-databases-copy", daemon=True),
                                *(threading.Thread(target=self._drop, name=f"test-databases-drop-{n}", daemon=True)
                                  for n in range(self.DROPPERS))]
                for thread in self.threads:
                    thread.start()

    def take(self) -> str:
        self._started()
        try:
            url = self.ready.get_nowait()
        except queue.Empty:
            url = _copy_of_the_template()
        self.spares.put(True)
        return url

    def drop_later(self, url: str) -> None:
        self._started()
        self.drops.put(url)

    def close(self) -> None:
        """Stop copying, hand the unused spares to the droppers and wait until every drop is done. Only
        DROPPERS at a time: four test processes dropping dozens of databases at once ran Postgres out of
        connection slots ("too many clients"), and each database refused so was left behind."""
        if not self.threads:
            return
        while True:   # spares are no longer needed
            try:
                self.spares.get_nowait()
            except queue.Empty:
                break
        self.spares.put(False)
        self.threads[0].join(300)   # the copy it is making
        while not self.ready.empty():
            self.drops.put(self.ready.get_nowait())
        for _ in range(self.DROPPERS):
            self.drops.put(None)
        for thread in self.threads[1:]:
            thread.join(300)
        self.threads = []


def _drop_patiently(url: str, attempts: int = 10) -> None:
    """drop_database, again after a pause while Postgres refuses the connection (its slots all taken)."""
    for attempt in range(attempts):
        try:
            drop_database(url)
            return
        except psycopg.OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


_spares = _Spares()


def create_database() -> str:
    """A private database, already migrated: a copy of this session's migrated template."""
    return _spares.take()


def drop_database_later(url: str) -> None:
    """Drop a database the test no longer uses, in the background (drop_database drops it now)."""
    _spares.drop_later(url)


@pytest.fixture(scope="session", autouse=True)
def _drop_the_template() -> Iterator[None]:
    """At the session's end: finish the background drops, drop the spares and this session's template."""
    yield
    _spares.close()
    if "name" in _template:
        drop_database(_url_of(_template.pop("name")))


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = create_database()
    yield url
    drop_database_later(url)


@pytest.fixture()
def fresh_database_url() -> Iterator[str]:
    """A database of the test's own, migrated, dropped afterwards."""
    url = create_database()
    yield url
    drop_database_later(url)


@pytest.fixture()
def db(database_url) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        yield conn


_CLIENT_LOCK = threading.Lock()


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
        log_path = self.tmp / f"{role.replace(',', '+')}-{self._started}.log"
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

    def start_all(self, roles=("ingest", "commander", "diagnostician", "fixer", "resolver"), *,
                  separate: bool | tuple[str, ...] = False) -> None:
        """Start the roles' workers: by default one process serving them all (`erdu worker a,b,c`: its own
        queue per role, one thread pool), which starts in a fifth of the time of one process per role.
        `separate=True` gives every role its own process; a tuple of roles gives those their own (say the
        fixer, whose prefork pool a test kills or crashes) and the rest one shared process."""
        alone = tuple(roles) if separate is True else tuple(separate or ())
        shared = [r for r in roles if r not in alone]
        if len(shared) == 1:
            alone, shared = alone + tuple(shared), []
        procs = [(r, self.start(r, wait=False)) for r in roles if r in alone]
        if shared:
            procs.append((",".join(shared), self._start_shared(shared)))
        for role, proc in procs:
            self.wait_ready(role, proc)

    def _start_shared(self, roles: list[str]) -> subprocess.Popen:
        proc = self.start(",".join(roles), wait=False)
        self.procs.pop(",".join(roles))
        proc.combined = tuple(roles)
        for role in roles:
            self.procs.setdefault(role, []).append(proc)
        return proc

    def kill(self, role: str, sig: int = signal.SIGKILL) -> None:
        """Stop a role's worker processes. A process shared with other roles goes, and the other roles get
        a new shared process at once: the role is stopped, the rest serve on."""
        for proc in self.procs.pop(role, []):
            if proc.poll() is None:
                os.killpg(proc.pid, sig)
                proc.wait(30)
            others = [r for r in getattr(proc, "combined", ()) if r != role]
            for other in others:
                self.procs[other] = [p for p in self.procs.get(other, []) if p is not proc]
            if len(others) == 1:
                self.start(others[0])
            elif others:
                restarted = self._start_shared(others)
                self.wait_ready(",".join(others), restarted)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop every process, all roles at once (SIGTERM: Celery's warm shutdown; SIGKILL after 20 s)."""
        procs = list({id(proc): proc for role in self.procs.values() for proc in role}.values())
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.procs.clear()

    def clear(self, settled: tuple[str, ...] | None = ("closed", "escalated", "awaiting_approval"),
              queues: tuple[str, ...] = ("ingest", "commander", "diagnostician", "fixer", "resolver")) -> None:
        """Between tests sharing this stack: wait until every queue is empty and every incident has settled
        in one of `settled` (an event, not a fixed sleep; None: do not wait on incidents), then empty every
        table and every Redis key but the broker's bindings, so the next test starts as on a new stack."""
        import redis as redis_lib

        r = redis_lib.Redis.from_url(self.redis_url)

        def quiet() -> bool:
            if any(r.llen(q) for q in queues) or r.hlen("unacked"):
                return False
            return settled is None or not incident_rows(
                self.database_url, "SELECT id FROM incidents WHERE NOT status = ANY(%s)", (list(settled),))

        wait_for(quiet, 60, what="the shared stack settled")
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            tables = [row[0] for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'")]
            conn.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")
        stale = [key for key in r.scan_iter() if not key.startswith(b"_kombu.")]
        if stale:
            r.delete(*stale)

    @property
    def client(self):
        """A plain Celery client, as any producer would use (made once, even when threads ask at once:
        celery's lazily built module fails an import that two threads make at the same moment)."""
        with _CLIENT_LOCK:
            if self._client is None:
                from celery import Celery

                self._client = Celery("test-producer", broker=self.redis_url)
                self._client.conf.update(task_serializer="json", accept_content=["json"])
        return self._client

    def run_task(self, name: str, *args, queue: str, timeout: float = 60) -> str:
        """Send a task and wait until a worker has run it to the end: Celery logs the task's id with
        "succeeded", "raised", "failed" or "retry" in the worker's log once it has finished."""
        task_id = self.client.send_task(name, args=args, queue=queue, routing_key=queue).id
        ends = tuple(f"[{task_id}] {word}" for word in ("succeeded", "raised", "failed", "retry"))

        def finished() -> bool:
            return any(end in log.read_text(errors="replace") for log in self.tmp.glob("*.log") for end in ends)

        wait_for(finished, timeout, 0.05, what=f"{name}[{task_id}] run by a worker")
        return task_id

    def send_event(self, payload, **options) -> str:
        return self.client.send_task("erdu.ingest", args=(payload,), queue="ingest", **options).id

    def erdu(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "erdu_tasks.cli", *args], env=self.env, cwd=self.tmp,
                              capture_output=True, text=True, timeout=timeout)


class StackMaker:
    """Builds stacks, each on a fresh database (a template copy) and a fresh Redis db number; stops them all."""

    def __init__(self, tmp: Path, redis_server: RedisServer) -> None:
        self.tmp = tmp
        self.redis_server = redis_server
        self.made: list[tuple[Stack, str]] = []
        self.counter = iter(range(1, 16))

    def __call__(self, extra_env: dict[str, str] | None = None, redis_url: str | None = None) -> Stack:
        import redis as redis_lib

        url = create_database()
        r_url = redis_url or f"redis://127.0.0.1:{self.redis_server.port}/{next(self.counter)}"
        redis_lib.Redis.from_url(r_url).flushdb()
        stack = Stack(self.tmp / f"stack{len(self.made)}", r_url, url, extra_env)
        stack.tmp.mkdir(parents=True, exist_ok=True)
        self.made.append((stack, url))
        return stack

    def close(self) -> None:
        # The test is over and its database is dropped next: no need to wait for a warm shutdown.
        for stack, url in self.made:
            stack.stop(signal.SIGKILL)
            drop_database_later(url)


@pytest.fixture()
def stack_factory(tmp_path, redis_server) -> Iterator[Callable[..., Stack]]:
    """Build stacks for one test; they are stopped and their databases dropped when it ends."""
    make = StackMaker(tmp_path, redis_server)
    yield make
    make.close()


@pytest.fixture(scope="module")
def module_stack_factory(tmp_path_factory, redis_server) -> Iterator[Callable[..., Stack]]:
    """Build stacks shared by a module's tests (tests that kill no worker and need no settings of their own).

    Redis db numbers 1-15 are shared with stack_factory's, so a module's shared stack uses its own private
    redis-server: a per-test stack's flushdb never touches it."""
    server = RedisServer(tmp_path_factory.mktemp("module-redis"))
    make = StackMaker(tmp_path_factory.mktemp("module-stacks"), server)
    yield make
    make.close()
    server.stop()


# ---- order: the longest tests start first -----------------------------------------------------------------
#
# `make test` runs four xdist workers with --dist loadgroup: each work unit (an xdist_group, or a single test)
# goes to the next worker that runs low on work, in the order of the collection. A 60-second test that
# happens to be collected last starts last and finishes a minute after everything else, so the collection
# is sorted by expected length, longest first (the classic longest-processing-time-first rule). The
# expectation comes from a test's `slow` mark: `@pytest.mark.slow(60)` says it takes about 60 s on the 2-core
# development machine (`slow` without a figure counts as SLOW_DEFAULT_SECONDS); every other test counts as
# one second. An xdist group moves as a whole, by the sum of its tests, and keeps its own order. The sort
# is stable: tests of equal weight keep the collection order. A stale figure only costs some time.

SLOW_DEFAULT_SECONDS = 10.0


def _expected_seconds(item: pytest.Item) -> float:
    mark = item.get_closest_marker("slow")
    if mark is None:
        return 1.0
    return float(mark.args[0]) if mark.args else SLOW_DEFAULT_SECONDS


def _xdist_group(item: pytest.Item) -> str | None:
    mark = item.get_closest_marker("xdist_group")
    if mark is None:
        return None
    return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))


def pytest_configure(config: pytest.Config) -> None:
    # xdist by default reorders its work units by their number of tests (the biggest group first), which
    # would put every group ahead of the long single tests; the order of the collection is the one wanted.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups: dict[str, float] = {}
    for item in items:
        group = _xdist_group(item)
        if group is not None:
            groups[group] = groups.get(group, 0.0) + _expected_seconds(item)

    def weight(item: pytest.Item) -> float:
        group = _xdist_group(item)
        return groups[group] if group is not None else _expected_seconds(item)

    items.sort(key=weight, reverse=True)


def drop_the_hand_on(redis_url: str, queue_name: str, incident_id: str) -> None:
    """Empty a stopped role's queue once the incident's hand-on message is on it, so only a task the test sends
    next runs. A stage publishes its hand-on after its commit: the incident's new status shows before the
    message is there, and emptying the queue then would leave a late hand-on to run as well."""
    import redis

    broker = redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: any(incident_id.encode() in m for m in broker.lrange(queue_name, 0, -1)), 30,
                 what=f"the incident's message on the {queue_name} queue")   # its headers carry the args' repr
        broker.delete(queue_name)
    finally:
        broker.close()


def incident_rows(database_url: str, sql: str = "SELECT * FROM incidents", params=()) -> list[dict]:
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(sql, params).fetchall()

