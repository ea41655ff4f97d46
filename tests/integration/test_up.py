"""`erdu up` from a fresh directory with nothing configured: private servers, a closed incident, a clean stop."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import incident_rows, wait_for

RUNBOOK = """
runbooks:
  - name: reset-billing-pool
    match: {service: billing}
    diagnosis_hint: The billing connection pool is exhausted.
    actions:
      - action: noop
        params: {message: pool reset}
    validation: {check: noop}
"""


class UpProcess:
    """`erdu up` running in a directory, its output collected line by line."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.lines: list[str] = []
        self.proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", "up"], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def value(self, key: str) -> str | None:
        for line in self.lines:
            if line.startswith(f"{key}="):
                return line.split("=", 1)[1]
        return None

    def wait_up(self, timeout: float = 180) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, f"erdu up exited early:\n{self.output}"
            return "ERDU is up" in self.output

        wait_for(up, timeout, 0.25, what="erdu up to be ready")

    def tree(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)


def listening_ports(procs: list[psutil.Process]) -> set[int]:
    pids = {p.pid for p in procs}
    return {c.laddr.port for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids}


def memory_of(procs: list[psutil.Process]) -> tuple[int, int]:
    """Summed RSS (shared pages counted in every process) and PSS (shared pages split between them)."""
    rss = pss = 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


@pytest.fixture()
def fresh_dir(tmp_path):
    workdir = tmp_path / "fresh"
    workdir.mkdir()
    yield workdir
    link = workdir / "var" / "postgres"
    if link.is_symlink():  # as root the data lives where the postgres user can reach it
        shutil.rmtree(link.resolve(), ignore_errors=True)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ERDU_", "FLOWER_"))}
    env.update(PYTHONUNBUFFERED="1", COLUMNS="200", **extra)
    return env


@pytest.mark.slow(26)
def test_up_in_a_fresh_directory_runs_everything_closes_an_incident_and_leaves_nothing_behind(fresh_dir):
    (fresh_dir / "runbooks").mkdir()
    (fresh_dir / "runbooks" / "billing.yaml").write_text(RUNBOOK)
    (fresh_dir / "erdu.yaml").write_text("runbooks_dir: runbooks\n")
    up = UpProcess(fresh_dir, clean_env(ERDU_UP_PROBE_PORTS="0"))
    try:
        up.wait_up()
        redis_url, database_url = up.value("ERDU_REDIS_URL"), up.value("ERDU_DATABASE_URL")
        assert redis_url and database_url, up.output
        assert ":6379/" not in redis_url and ":5432/" not in database_url, "expected private servers"
        assert (fresh_dir / "var" / "redis").is_dir() and (fresh_dir / "var" / "postgres" / "PG_VERSION").exists()
        for part in ("worker-ingest", "worker-commander", "worker-diagnostician", "worker-fixer",
                     "worker-resolver", "worker-monitor", "beat", "flower", "metrics"):
            assert part in up.output, part

        sent = subprocess.run([sys.executable, "-m", "erdu_tasks.cli", "send", "Connection pool exhausted for billing",
                               "--service", "billing"], cwd=fresh_dir, capture_output=True, text=True, timeout=60,
                              env=clean_env(ERDU_REDIS_URL=redis_url, ERDU_DATABASE_URL=database_url))
        assert sent.returncode == 0, sent.stderr
        closed = wait_for(lambda: incident_rows(database_url, "SELECT * FROM incidents WHERE status = 'closed'"),
                          90, 0.5, what="the incident to close")
        assert closed[0]["service"] == "billing" and closed[0]["resolved_by"] == "runbook:reset-billing-pool"
        assert (fresh_dir / closed[0]["report_path"]).is_file()  # relative paths are under the working directory

        procs = [psutil.Process(up.proc.pid), *up.tree()]
        # redis, postgres, flower, metrics at least: waited for (they listen once started), not slept on
        ports = wait_for(lambda: (lambda found: found if len(found) >= 4 else None)(listening_ports(procs)), 30,
                         0.2, what="four listening ports")
        rss, pss = memory_of(procs)
        print(f"\nidle stack: {len(procs)} processes, RSS {rss / 2**20:.0f} MiB (PSS {pss / 2**20:.0f} MiB), "
              f"listening on {sorted(ports)}")
        assert len(ports) >= 4, ports  # redis, postgres, flower, metrics at least
    finally:
        tree = up.tree() if up.proc.poll() is None else []
        up.proc.send_signal(signal.SIGINT)
        try:
            code = up.proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(up.proc.pid, signal.SIGKILL)
            raise
    assert code == 0, up.output
    assert "stopped." in up.output
    time.sleep(0.5)
    left = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left behind: {[(p.pid, p.name()) for p in left]}"
    still = [port for port in ports if answers(port)]
    assert not still, f"ports still listening: {still}"
    assert not (fresh_dir / "var" / "up.json").exists()


def test_a_second_up_on_the_same_state_directory_is_refused_before_it_starts_anything(tmp_path):
    import fcntl
    import json

    var = tmp_path / "var"
    var.mkdir()
    (var / "up.json").write_text(json.dumps({"pid": 4242}))
    with open(var / "up.lock", "a+") as held:   # what the running stack holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        env = {**os.environ, "ERDU_STATE_DIR": str(var), "ERDU_REDIS_URL": "redis://127.0.0.1:1/0"}
        env.pop("ERDU_CONFIG", None)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "erdu_tasks.cli", "up"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "another `erdu up` (pid 4242)" in done.stdout + done.stderr
    assert time.monotonic() - started < 30 and not (var / "logs").exists()   # nothing was started
