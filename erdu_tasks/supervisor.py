"""`erdu up`: run every part of ERDU as a supervised child process; Ctrl-C stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .embedded import EmbeddedServer, port_open, start_postgres, start_redis
from .names import ROLES
from .settings import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, Settings

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Children get SIGTERM if the supervisor itself dies, so nothing is left behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    os.setpgrp()


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    where: str = ""
    process: subprocess.Popen | None = None
    restarts: int = 0
    started_at: float = 0.0
    log_path: Path | None = None
    backoff: float = 1.0
    next_start: float = 0.0
    extra: dict = field(default_factory=dict)

    def start(self, env: dict[str, str], logs: Path) -> None:
        """Start (or restart) the process, logging to var/logs/NAME.log."""
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"{self.name}.log"
        out = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.started_at = time.monotonic()


def resolve_services(settings: Settings, var: Path, console: Console) -> tuple[dict[str, str], list[EmbeddedServer]]:
    """Use configured URLs; otherwise the defaults if they answer; otherwise start private servers."""
    env_set = {k for k in ("ERDU_REDIS_URL", "ERDU_DATABASE_URL") if os.environ.get(k)}
    urls = {"ERDU_REDIS_URL": settings.redis_url, "ERDU_DATABASE_URL": settings.database_url}
    started: list[EmbeddedServer] = []
    if "ERDU_REDIS_URL" not in env_set and settings.redis_url == DEFAULT_REDIS_URL \
            and not port_open("127.0.0.1", 6379):
        console.print("no Redis answering on 127.0.0.1:6379: starting a private one under ./var/redis")
        server = start_redis(var)
        started.append(server)
        urls["ERDU_REDIS_URL"] = server.url
    if "ERDU_DATABASE_URL" not in env_set and settings.database_url == DEFAULT_DATABASE_URL \
            and not port_open("127.0.0.1", 5432):
        console.print("no Postgres answering on 127.0.0.1:5432: starting a private one under ./var/postgres")
        try:
            server = start_postgres(var)
        except Exception:
            for s in started:
                s.stop()
            raise
        started.append(server)
        urls["ERDU_DATABASE_URL"] = server.url
    return urls, started


def build_children(settings: Settings, *, with_api: bool, with_flower: bool) -> list[Child]:
    """One worker per role, beat, and optionally the API and Flower."""
    exe = [sys.executable, "-m", "erdu_tasks.cli"]
    children = [Child(f"worker-{role}", [*exe, "worker", role], where=f"queue {role}") for role in ROLES]
    children.append(Child("beat", [*exe, "beat"], where="schedules monitors and the reconciler"))
    api_cfg = settings.api or {}
    if with_api and _has_module("erdu_tasks.api"):
        port = int(api_cfg.get("port", 8080))
        children.append(Child("api", [*exe, "api", "--port", str(port)], where=f"http://127.0.0.1:{port}/docs"))
    if with_flower:
        port = int((settings.flower or {}).get("port", 5555))
        children.append(Child("flower", [*exe, "flower", "--port", str(port)], where=f"http://127.0.0.1:{port}/"))
    return children


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def run_up(settings: Settings, *, with_api: bool = True, with_flower: bool = True,
           console: Console | None = None) -> int:
    """Run the stack until SIGINT/SIGTERM; returns the exit code."""
    from .migrate import migrate
    from .preflight import check_redis

    console = console or Console()
    var = Path(settings.state_dir)
    var.mkdir(parents=True, exist_ok=True)
    urls, servers = resolve_services(settings, var, console)
    stop = {"flag": False}

    def on_signal(signum, frame):  # noqa: ARG001
        stop["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    children: list[Child] = []
    try:
        check_redis(urls["ERDU_REDIS_URL"])
        applied = migrate(urls["ERDU_DATABASE_URL"])
        console.print(f"migrations applied: {', '.join(applied)}" if applied else "schema is up to date")
        env = {**os.environ, **urls, "PYTHONUNBUFFERED": "1"}
        children = build_children(settings, with_api=with_api, with_flower=with_flower and _has_flower_cli())
        for child in children:
            child.start(env, var / "logs")
        _print_table(console, children, urls, var)
        console.print("ERDU is up. Ctrl-C stops everything.")
        while not stop["flag"]:
            now = time.monotonic()
            for child in children:
                code = child.process.poll() if child.process else None
                if child.process is not None and code is not None:
                    child.process = None
                    child.restarts += 1
                    child.backoff = 1.0 if now - child.started_at > 60 else min(child.backoff * 2, 30.0)
                    child.next_start = now + child.backoff
                    console.print(f"[yellow]{child.name} exited with code {code}; restarting in "
                                  f"{child.backoff:.0f} s (restart #{child.restarts}, log {child.log_path})[/]")
                if child.process is None and now >= child.next_start and not stop["flag"]:
                    child.start(env, var / "logs")
            time.sleep(0.2)
        console.print("stopping ...")
        return 0
    finally:
        _stop_children(children)
        for server in reversed(servers):
            server.stop()
        console.print("stopped.")


def _has_flower_cli() -> bool:
    from .cli import app as typer_app

    return any(c.name == "flower" for c in typer_app.registered_commands)


def _stop_children(children: list[Child], timeout: float = 20.0) -> None:
    live = [c for c in children if c.process and c.process.poll() is None]
    for c in live:
        try:
            os.killpg(c.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for c in live:
        try:
            c.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(c.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            c.process.wait(5)


def _print_table(console: Console, children: list[Child], urls: dict[str, str], var: Path) -> None:
    table = Table(title="ERDU stack")
    for col in ("Part", "PID", "Where"):
        table.add_column(col)
    table.add_row("redis", "", urls["ERDU_REDIS_URL"])
    table.add_row("postgres", "", urls["ERDU_DATABASE_URL"])
    for c in children:
        table.add_row(c.name, str(c.process.pid if c.process else "-"), c.where)
    table.add_row("logs", "", str(var / "logs"))
    console.print(table)
