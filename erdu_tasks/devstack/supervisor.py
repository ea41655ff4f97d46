"""`erdu up`: run every part of ERDU as a supervised child process; Ctrl-C stops them all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from erdu_tasks.devstack.embedded import EmbeddedServer, free_port, port_open, start_postgres, start_redis, die_with_parent
from erdu_tasks.names import ROLES
from erdu_tasks.settings import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, Settings

DEFAULT_FLOWER_PORT = 5555
DEFAULT_METRICS_PORT = 9808
DEFAULT_API_PORT = 8080
READY_TIMEOUT = 120.0


def _child_preexec() -> None:
    """Own process group (Ctrl-C reaches only the supervisor) and SIGTERM if the supervisor dies."""
    os.setpgrp()
    die_with_parent(signal.SIGTERM)


@dataclass
class Child:
    """One supervised process, and how to tell it is ready."""

    name: str
    argv: list[str]
    where: str = ""
    ready_port: int | None = None
    ready_marker: str | None = None
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    log_path: Path | None = None
    backoff: float = 1.0
    next_start: float = 0.0
    _log_offset: int = 0

    def start(self, env: dict[str, str], logs: Path, cwd: Path | None = None) -> None:
        """Start (or restart) the process, appending to var/logs/NAME.log."""
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"{self.name}.log"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                            stdin=subprocess.DEVNULL, preexec_fn=_child_preexec)
        self.started_at = time.monotonic()

    def is_ready(self) -> bool:
        """True once the process answers on its port or has logged its ready line (since this start)."""
        if self.process is None or self.process.poll() is not None:
            return False
        if self.ready_port is not None:
            return port_open("127.0.0.1", self.ready_port, timeout=0.2)
        if self.ready_marker is not None and self.log_path is not None:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                return self.ready_marker.encode() in f.read()
        return True


def probe_default_ports_from_env() -> bool:
    """ERDU_UP_PROBE_PORTS=0 makes `erdu up` start private servers even if something answers on 6379/5432."""
    return os.environ.get("ERDU_UP_PROBE_PORTS", "1").strip().lower() not in ("0", "no", "false", "off")


def resolve_services(settings: Settings, var: Path, console: Console, *,
                     probe_default_ports: bool = True) -> tuple[dict[str, str], list[EmbeddedServer]]:
    """Use configured URLs; otherwise the defaults if they answer; otherwise start private servers."""
    env_set = {k for k in ("ERDU_REDIS_URL", "ERDU_DATABASE_URL") if os.environ.get(k)}
    urls = {"ERDU_REDIS_URL": settings.redis_url, "ERDU_DATABASE_URL": settings.database_url}
    started: list[EmbeddedServer] = []

    def wanted(key: str, configured: str, default: str, port: int) -> bool:
        if key in env_set or configured != default:
            return False
        return not (probe_default_ports and port_open("127.0.0.1", port))

    try:
        if wanted("ERDU_REDIS_URL", settings.redis_url, DEFAULT_REDIS_URL, 6379):
            console.print("no Redis configured: starting a private one under ./var/redis")
            server = start_redis(var)
            started.append(server)
            urls["ERDU_REDIS_URL"] = server.url
        if wanted("ERDU_DATABASE_URL", settings.database_url, DEFAULT_DATABASE_URL, 5432):
            console.print("no Postgres configured: starting a private one under ./var/postgres")
            server = start_postgres(var)
            started.append(server)
            urls["ERDU_DATABASE_URL"] = server.url
    except BaseException:
        for s in reversed(started):
            s.stop()
        raise
    return urls, started


def _port(wanted: int, taken: set[int]) -> int:
    """The wanted port if it is free, else any free one (so two stacks on one machine do not collide)."""
    if wanted not in taken and not port_open("127.0.0.1", wanted, timeout=0.2):
        taken.add(wanted)
        return wanted
    port = free_port()
    taken.add(port)
    return port


def build_children(settings: Settings, *, with_api: bool, with_flower: bool, with_metrics: bool = True,
                   roles: tuple[str, ...] = ROLES, with_beat: bool = True) -> list[Child]:
    """One worker per role, beat, and (when available) the API, Flower and the metrics endpoint."""
    exe = [sys.executable, "-m", "erdu_tasks.cli"]
    children = [Child(f"worker-{role}", [*exe, "worker", role], where=f"queue {role}", ready_marker=" ready.")
                for role in roles]
    if with_beat:
        children.append(Child("beat", [*exe, "beat"], where="schedules monitors and the reconciler"))
    if settings.monitors.celery_apps is not None:   # the team's Celery apps: one long-running event consumer
        apps = settings.monitors.celery_apps.apps
        children.append(Child("celery-apps", [*exe, "celery-apps", "watch"], ready_marker="watching celery events",
                              where=f"watches {len(apps)} Celery app(s): {', '.join(a.name for a in apps)}"))
    taken: set[int] = set()
    if with_api and _has_module("erdu_tasks.api"):
        port = _port(settings.api.port, taken)
        children.append(Child("api", [*exe, "api", "--port", str(port)], where=f"http://127.0.0.1:{port}/ (the console; API docs /docs)",
                              ready_port=port))
    if with_flower:
        port = _port(settings.flower.port, taken)
        children.append(Child("flower", [*exe, "flower", "--port", str(port)], where=f"http://127.0.0.1:{port}/",
                              ready_port=port))
    api = next((c for c in children if c.name == "api"), None)
    if api is not None:   # ERDU's metrics are the API's; Flower's own /metrics is Flower's, not listed
        api.where += f"  (metrics: http://127.0.0.1:{api.ready_port}/metrics)"
    if with_metrics and api is None:
        port = _port(DEFAULT_METRICS_PORT, taken)
        children.append(Child("metrics", [*exe, "metrics", "--port", str(port)],
                              where=f"http://127.0.0.1:{port}/metrics", ready_port=port))
    return children


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None



class Supervisor:
    """Starts children, restarts the ones that crash (with backoff), stops them all on request."""

    def __init__(self, children: list[Child], env: dict[str, str], logs: Path, console: Console,
                 cwd: Path | None = None) -> None:
        self.children = children
        self.env = env
        self.logs = logs
        self.cwd = cwd
        self.console = console
        self.stopping = False

    def start_all(self) -> None:
        """Start every child."""
        for child in self.children:
            child.start(self.env, self.logs, self.cwd)

    def tick(self) -> None:
        """Restart what exited (backoff doubles while a child keeps crashing within a minute of its start)."""
        now = time.monotonic()
        for child in self.children:
            code = child.process.poll() if child.process else None
            if child.process is not None and code is not None:
                child.process = None
                child.restarts += 1
                child.backoff = 1.0 if now - child.started_at > 60 else min(child.backoff * 2, 30.0)
                child.next_start = now + child.backoff
                self.console.print(f"[yellow]{child.name} exited with code {code}; restarting in "
                                   f"{child.backoff:.0f} s (restart #{child.restarts}, log {child.log_path})[/]",
                                   highlight=False)
            if child.process is None and now >= child.next_start and not self.stopping:
                child.start(self.env, self.logs, self.cwd)
                if child.restarts:
                    self.console.print(f"{child.name} restarted (pid {child.process.pid})", highlight=False)

    def wait_ready(self, timeout: float, should_stop: Callable[[], bool]) -> list[Child]:
        """Wait until every child is ready; returns those that are not (empty when all are)."""
        deadline = time.monotonic() + timeout
        pending = list(self.children)
        while pending and time.monotonic() < deadline and not should_stop():
            self.tick()
            pending = [c for c in pending if not c.is_ready()]
            if pending:
                time.sleep(0.2)
        return pending

    def stop_all(self, timeout: float = 20.0) -> None:
        """SIGTERM each child (a worker finishes its task first), SIGKILL its process group after timeout."""
        self.stopping = True
        stop_children(self.children, timeout)


def stop_children(children: list[Child], timeout: float = 20.0) -> None:
    """Stop children and everything in their process groups."""
    live = [c for c in children if c.process is not None]
    for c in live:
        if c.process.poll() is None:
            try:
                os.kill(c.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for c in live:
        try:
            c.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for c in live:
        # Anything left in the group (pool children of a worker that died first) goes now.
        try:
            os.killpg(c.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            c.process.wait(5)
        except subprocess.TimeoutExpired:
            pass


def write_state(var: Path, urls: dict[str, str], children: list[Child]) -> Path:
    """var/up.json: where this stack's parts are, for other commands and scripts."""
    path = var / "up.json"
    state = {"pid": os.getpid(), **urls,
             "children": {c.name: {"pid": c.process.pid if c.process else None, "where": c.where}
                          for c in children}}
    path.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    return path


def hold_state_dir(var: Path):
    """Lock the state directory for this stack (var/up.lock, released when the process ends, however it
    ends); None if another `erdu up` holds it: two stacks on one state would share logs, private
    servers' data and up.json."""
    import fcntl

    handle = open(var / "up.lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def run_up(settings: Settings, *, with_api: bool = True, with_flower: bool = True, with_metrics: bool = True,
           console: Console | None = None, probe_default_ports: bool | None = None) -> int:
    """Run the stack until SIGINT/SIGTERM; returns the exit code."""
    from erdu_tasks.store.migrate import migrate
    from erdu_tasks.store.preflight import check_redis

    console = console or Console()
    var = Path(settings.state_dir)
    var.mkdir(parents=True, exist_ok=True)
    lock = hold_state_dir(var)
    if lock is None:
        try:
            other = json.loads((var / "up.json").read_text(encoding="utf-8")).get("pid")
        except (OSError, ValueError):
            other = None
        console.print(f"[bold red]error:[/] another `erdu up`{f' (pid {other})' if other else ''} runs on the "
                      f"state directory {escape(str(var.resolve()))}; stop it first, or give a second stack its "
                      "own ERDU_STATE_DIR (and ports)", highlight=False)
        return 1
    signals = {"count": 0}

    def on_signal(signum, frame):  # noqa: ARG001
        signals["count"] += 1

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    servers: list[EmbeddedServer] = []
    supervisor: Supervisor | None = None
    state_file: Path | None = None
    try:
        probe = probe_default_ports_from_env() if probe_default_ports is None else probe_default_ports
        urls, servers = resolve_services(settings, var, console, probe_default_ports=probe)
        check_redis(urls["ERDU_REDIS_URL"])
        applied = migrate(urls["ERDU_DATABASE_URL"])
        console.print(f"migrations applied: {', '.join(applied)}" if applied else "schema is up to date")
        env = {**os.environ, **urls, "PYTHONUNBUFFERED": "1"}
        children = build_children(settings, with_api=with_api, with_flower=with_flower, with_metrics=with_metrics)
        supervisor = Supervisor(children, env, var / "logs", console)
        supervisor.start_all()
        print_table(console, children, urls, servers, var)
        for key, value in urls.items():
            print(f"{key}={value}", flush=True)
        state_file = write_state(var, urls, children)
        slow = supervisor.wait_ready(READY_TIMEOUT, lambda: signals["count"] > 0)
        if signals["count"] == 0:
            for child in slow:
                console.print(f"[yellow]{child.name} is not ready after {READY_TIMEOUT:.0f} s; see {child.log_path}[/]",
                              highlight=False)
            console.print("ERDU is up. Ctrl-C stops everything.")
        while signals["count"] == 0:
            supervisor.tick()
            time.sleep(0.2)
        console.print("stopping ...")
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if supervisor is not None:
            supervisor.stop_all()
        for server in reversed(servers):
            server.stop()
        if state_file is not None:
            state_file.unlink(missing_ok=True)
        for s, handler in old.items():
            signal.signal(s, handler)
        console.print("stopped.")


def print_table(console: Console, children: list[Child], urls: dict[str, str], servers: list[EmbeddedServer],
                var: Path) -> None:
    """One table: what runs, its pid, and where to reach it."""
    table = Table(title="ERDU stack")
    for col in ("Part", "PID", "Where"):
        table.add_column(col, overflow="fold")
    own = {s.name: s for s in servers}
    for name, key in (("redis", "ERDU_REDIS_URL"), ("postgres", "ERDU_DATABASE_URL")):
        server = own.get(name)
        table.add_row(name + (" (private)" if server else ""), str(server.process.pid) if server else "",
                      urls[key])
    for c in children:
        table.add_row(c.name, str(c.process.pid if c.process else "-"), c.where)
    table.add_row("logs", "", str(var / "logs"))
    console.print(table)
