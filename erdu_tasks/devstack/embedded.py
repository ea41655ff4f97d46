"""Private Redis and Postgres under ./var for `erdu up` when none is configured or answering."""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from erdu_tasks.errors import ServiceUnreachable

_PR_SET_PDEATHSIG = 1


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections there."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_prctl():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Loaded up front: a child that has just dropped root may no longer be able to import anything.
_PRCTL = _load_prctl()


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send sig to this process when its parent dies (Linux; elsewhere a no-op)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, sig)


@dataclass
class EmbeddedServer:
    """A server process ERDU started in the foreground and must stop."""

    name: str
    url: str
    process: subprocess.Popen
    stop_signal: int = signal.SIGTERM
    where: str = ""

    def stop(self, timeout: float = 30.0) -> None:
        """Stop it cleanly (Postgres: fast shutdown), then hard."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(self.stop_signal)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def _preexec(user: str | None, sig: int):
    """Run the child as user (when given), in its own process group, killed with sig if we die."""
    info = pwd.getpwnam(user) if user else None

    def run() -> None:
        os.setpgrp()
        if info is not None:
            os.initgroups(info.pw_name, info.pw_gid)
            os.setgid(info.pw_gid)
            os.setuid(info.pw_uid)
        # After the uid change: the kernel clears the parent-death signal when credentials change.
        die_with_parent(sig)

    return run


def server_user() -> str | None:
    """Postgres refuses to run as root: use an unprivileged system account when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise ServiceUnreachable("running as root and there is no unprivileged user (postgres or nobody) "
                             "to run the private Postgres as; set ERDU_DATABASE_URL instead")


def start_redis(var: Path) -> EmbeddedServer:
    """redis-server on a free port, data under var/redis (append-only, never evicts)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise ServiceUnreachable("no Redis configured and redis-server is not on PATH: install Redis "
                                 "(e.g. apt-get install redis-server) or set ERDU_REDIS_URL")
    data = (var / "redis").resolve()
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with open(data / "redis.log", "ab") as log:
        proc = subprocess.Popen(
            [exe, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data), "--appendonly", "yes",
             "--save", "", "--maxmemory-policy", "noeviction", "--daemonize", "no", "--loglevel", "warning"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_preexec(None, signal.SIGTERM),
        )
    server = EmbeddedServer("redis", f"redis://127.0.0.1:{port}/0", proc, signal.SIGTERM, str(data))
    _wait(lambda: port_open("127.0.0.1", port), "Redis", server, data / "redis.log")
    return server


def _pg_binaries() -> tuple[str, str]:
    """initdb and postgres, found through initdb on PATH (postgres sits next to it)."""
    initdb = shutil.which("initdb")
    if initdb is None:
        raise ServiceUnreachable("no Postgres configured and initdb is not on PATH: install PostgreSQL "
                                 "(its bin directory on PATH) or set ERDU_DATABASE_URL")
    postgres = Path(initdb).resolve().parent / "postgres"
    if not postgres.is_file():
        found = shutil.which("postgres")
        if found is None:
            raise ServiceUnreachable(f"found {initdb} but no postgres server binary next to it or on PATH")
        postgres = Path(found)
    return initdb, str(postgres)


def _reachable_by(user: str, path: Path) -> bool:
    """True if user can enter and write path (every parent directory must let it through)."""
    probe = subprocess.run(["test", "-w", str(path), "-a", "-x", str(path)], preexec_fn=_preexec(user, 0),
                           cwd="/", capture_output=True, timeout=10)
    return probe.returncode == 0


def _chown(path: Path, user: str) -> None:
    info = pwd.getpwnam(user)
    os.chown(path, info.pw_uid, info.pw_gid)


def _fallback_dir(var: Path, user: str) -> Path:
    """A data directory the server user can reach, keyed by the var directory it stands in for."""
    home = Path(pwd.getpwnam(user).pw_dir)
    base = home if home.is_dir() and home.stat().st_uid == pwd.getpwnam(user).pw_uid else Path("/var/tmp")
    key = hashlib.sha256(str(var.resolve()).encode()).hexdigest()[:12]
    path = base / "erdu" / key
    path.mkdir(parents=True, exist_ok=True)
    for p in (path.parent, path):
        _chown(p, user)
        os.chmod(p, 0o700)
    return path


def postgres_data_dir(var: Path, user: str | None) -> Path:
    """var/postgres, or (as root, when a private parent directory keeps the server user out) a directory
    it can reach, linked from var/postgres."""
    link = var / "postgres"
    if link.is_symlink():
        return link.resolve()
    link.mkdir(parents=True, exist_ok=True)
    data = link.resolve()
    if user is None:
        os.chmod(data, 0o700)
        return data
    _chown(data, user)
    os.chmod(data, 0o700)
    if _reachable_by(user, data):
        return data
    if any(data.iterdir()):
        raise ServiceUnreachable(f"{data} holds data but user {user} cannot reach it (a parent directory is "
                                 "private); open the parent directories to it or set ERDU_DATABASE_URL")
    data.rmdir()
    target = _fallback_dir(var, user)
    link.symlink_to(target, target_is_directory=True)
    return target


def start_postgres(var: Path) -> EmbeddedServer:
    """initdb (once), then the postgres server in the foreground on a free port, data under var/postgres."""
    initdb, postgres = _pg_binaries()
    user = server_user()
    var.mkdir(parents=True, exist_ok=True)
    data = postgres_data_dir(var, user)
    if not (data / "PG_VERSION").exists():
        done = subprocess.run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                               "--no-instructions"],
                              capture_output=True, text=True, preexec_fn=_preexec(user, signal.SIGTERM),
                              cwd="/", timeout=180)
        if done.returncode != 0:
            raise ServiceUnreachable(f"initdb failed in {data}: {(done.stderr or done.stdout).strip()[-400:]}")
    _clear_stale_pid(data)
    port = free_port()
    log_path = var / "logs" / "postgres.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # No Unix socket: clients use TCP on 127.0.0.1, and socket paths under deep directories are too long.
        proc = subprocess.Popen(
            [postgres, "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
             "-c", "unix_socket_directories=", "-c", "max_connections=200", "-c", "shared_buffers=64MB"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd="/",
            preexec_fn=_preexec(user, signal.SIGINT),
        )
    # SIGINT is Postgres's fast shutdown: it ends sessions instead of waiting for them.
    server = EmbeddedServer("postgres", f"postgresql://postgres@127.0.0.1:{port}/erdu", proc, signal.SIGINT,
                            str(data))
    _wait(lambda: _pg_ready(port), "Postgres", server, log_path, timeout=60)
    return server


def _clear_stale_pid(data: Path) -> None:
    """A postmaster.pid left by a killed server whose process is gone would block the start."""
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    import psutil

    try:
        pid = int(pid_file.read_text().splitlines()[0])
        alive = "postgres" in " ".join(psutil.Process(pid).cmdline())
    except (ValueError, IndexError, psutil.Error):
        alive = False
    if not alive:
        pid_file.unlink(missing_ok=True)
        return
    raise ServiceUnreachable(f"a Postgres server (pid {pid}) still runs on {data}; stop it first")


def _pg_ready(port: int) -> bool:
    import psycopg

    try:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def _wait(ready, name: str, server: EmbeddedServer, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
            raise ServiceUnreachable(f"{name} exited at start (code {server.process.returncode}); "
                                     f"log {log}:\n{tail}")
        if ready():
            return
        time.sleep(0.1)
    server.stop()
    raise ServiceUnreachable(f"{name} did not start within {timeout:.0f} s (log {log})")
