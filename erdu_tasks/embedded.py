"""Private Redis and Postgres under ./var for `erdu up` when none is configured or answering."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ServiceUnreachable


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


@dataclass
class EmbeddedServer:
    """A server process ERDU started and must stop."""

    name: str
    url: str
    stop_argv: list[str] | None
    process: subprocess.Popen | None
    user: str | None = None

    def stop(self) -> None:
        """Stop it cleanly, then hard."""
        if self.stop_argv:
            subprocess.run(self.stop_argv, capture_output=True, timeout=60, preexec_fn=_demote(self.user))
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _demote(user: str | None):
    if not user:
        return None
    info = pwd.getpwnam(user)

    def run() -> None:
        os.setgid(info.pw_gid)
        os.setuid(info.pw_uid)

    return run


def _server_user() -> str | None:
    """Postgres refuses to run as root: use an unprivileged system account when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise ServiceUnreachable("running as root and no unprivileged user (postgres/nobody) to run Postgres as")


def start_redis(var: Path) -> EmbeddedServer:
    """redis-server on a free port, data under var/redis (append-only, never evicts)."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise ServiceUnreachable("no Redis configured and redis-server is not on PATH: install Redis "
                                 "(e.g. apt-get install redis-server) or set ERDU_REDIS_URL")
    data = var / "redis"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(data / "redis.log", "ab")
    proc = subprocess.Popen(
        [exe, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data.resolve()), "--appendonly", "yes",
         "--save", "", "--maxmemory-policy", "noeviction", "--daemonize", "no"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    _wait(lambda: port_open("127.0.0.1", port), "Redis", proc)
    return EmbeddedServer("redis", f"redis://127.0.0.1:{port}/0", None, proc)


def start_postgres(var: Path) -> EmbeddedServer:
    """initdb (once) and pg_ctl start on a free port, data under var/postgres."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not initdb or not pg_ctl:
        raise ServiceUnreachable("no Postgres configured and initdb/pg_ctl are not on PATH: install PostgreSQL "
                                 "or set ERDU_DATABASE_URL")
    user = _server_user()
    data = (var / "postgres").resolve()
    sock = (var / "pgsock").resolve()
    sock.mkdir(parents=True, exist_ok=True)
    if user:
        info = pwd.getpwnam(user)
        for path in (var.resolve(), sock):
            os.chown(path, info.pw_uid, info.pw_gid) if path != var.resolve() else None
        os.chmod(var.resolve(), 0o755)
        os.chown(sock, info.pw_uid, info.pw_gid)
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        if user:
            info = pwd.getpwnam(user)
            os.chown(data, info.pw_uid, info.pw_gid)
        done = subprocess.run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                              capture_output=True, text=True, preexec_fn=_demote(user), timeout=120)
        if done.returncode != 0:
            raise ServiceUnreachable(f"initdb failed: {done.stderr.strip()[-300:]}")
    port = free_port()
    done = subprocess.run(
        [pg_ctl, "-D", str(data), "-l", str(data / "server.log"), "-w", "-t", "60",
         "-o", f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"],
        capture_output=True, text=True, preexec_fn=_demote(user), timeout=90,
    )
    if done.returncode != 0:
        raise ServiceUnreachable(f"pg_ctl start failed: {(done.stderr or done.stdout).strip()[-300:]}")
    return EmbeddedServer("postgres", f"postgresql://postgres@127.0.0.1:{port}/erdu",
                          [pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"], None, user)


def _wait(ready, name: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            raise ServiceUnreachable(f"{name} exited at start (code {proc.returncode})")
        time.sleep(0.1)
    raise ServiceUnreachable(f"{name} did not start within {timeout:.0f} s")
