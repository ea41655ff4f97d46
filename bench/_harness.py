"""Benchmark harness: a private redis-server, a private database and real worker processes."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import psycopg

_ROOT = Path(__file__).resolve().parents[1]
# The workers a bench starts run this checkout's code, whichever checkout the virtualenv was installed from.
os.environ["PYTHONPATH"] = os.pathsep.join([str(_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])

PG_ADMIN_URL = os.environ.get("ERDU_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BenchStack:
    """Private Redis + database + worker processes; use as a context manager."""

    def __init__(self, extra_env: dict[str, str] | None = None, *, database_url: str | None = None) -> None:
        """database_url: run on this (migrated) database, and leave it; by default a private one is made."""
        self.tmp = Path(tempfile.mkdtemp(prefix="erdu-bench-"))
        self.extra_env = extra_env or {}
        self.workers: dict[str, subprocess.Popen] = {}
        self.given_database = database_url

    def __enter__(self) -> "BenchStack":
        from erdu_tasks.store.migrate import migrate

        self.redis_port = free_port()
        self.redis = subprocess.Popen([shutil.which("redis-server"), "--bind", "127.0.0.1", "--port",
                                       str(self.redis_port), "--save", "", "--appendonly", "no", "--dir",
                                       str(self.tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        if self.given_database:
            self.database_url = self.given_database
            self.db_name = self.given_database.rsplit("/", 1)[1].split("?", 1)[0]
        else:
            self.db_name = f"erdu_bench_{secrets.token_hex(4)}"
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.db_name}"')
            self.database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.db_name}"
        migrate(self.database_url)
        self.env = {**os.environ, "ERDU_REDIS_URL": self.redis_url, "ERDU_DATABASE_URL": self.database_url,
                    "ERDU_REPORTS_DIR": str(self.tmp / "reports"), "ERDU_ALERTS_DIR": str(self.tmp / "alerts"),
                    "ERDU_STATE_DIR": str(self.tmp / "var"), **self.extra_env}
        self.env.pop("ERDU_CONFIG", None)
        return self

    def start(self, role: str) -> None:
        log = open(self.tmp / f"{role}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", "worker", role, "--loglevel", "WARNING"],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=self.tmp)
        self.workers[role] = proc
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._ready(role):
                return
            if proc.poll() is not None:
                raise RuntimeError((self.tmp / f"{role}.log").read_text()[-2000:])
            time.sleep(0.2)
        raise RuntimeError(f"worker {role} did not start")

    def _ready(self, role: str) -> bool:
        try:
            from celery import Celery

            app = Celery(broker=self.redis_url)
            replies = app.control.ping(destination=[f"{role}@{socket.gethostname()}"], timeout=0.5)
            return bool(replies)
        except Exception:
            return False

    def rss_mb(self, role: str) -> float:
        proc = psutil.Process(self.workers[role].pid)
        return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20

    def query(self, sql: str, params=()) -> list[dict]:
        with psycopg.connect(self.database_url, row_factory=psycopg.rows.dict_row) as conn:
            return conn.execute(sql, params).fetchall()

    def __exit__(self, *exc) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.redis.terminate()
        self.redis.wait(10)
        if not self.given_database:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        shutil.rmtree(self.tmp, ignore_errors=True)


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stop a process we started with start_new_session (and its children) by its own group id: SIGTERM,
    SIGKILL after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def write_json(path: str | None, figures: dict) -> None:
    """Write the figures as JSON when --json was given."""
    if path:
        Path(path).write_text(json.dumps(figures, indent=2) + "\n")
