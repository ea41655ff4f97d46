"""`erdu demo`: a flaky service breaks on a private stack and ERDU detects, diagnoses, restarts and reports it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn

from erdu_tasks.devstack.embedded import EmbeddedServer, free_port, start_postgres, start_redis
from erdu_tasks.errors import ErduError
from erdu_tasks.devstack.supervisor import Child, Supervisor, build_children

START_SECONDS = 90.0
"""How long the demo's processes may take to start: about 5 s alone, several times that on a busy two-core
machine (seven Python processes importing at once)."""
SERVICE = "demo-web"
ROLES_NEEDED = ("ingest", "monitor", "commander", "diagnostician", "fixer", "resolver")
STEPS = ("detection", "assessment", "diagnosis", "restart", "validation", "report")
SCENARIO_TIMEOUT = 60.0

# The flaky service: stdlib only, so the fixer can restart it with a plain argv.
FLAKY_SERVICE = '''\
"""demo-web: /health answers 200 until POST /break; a restart heals it."""
import http.server, os, socket, subprocess, sys, time, urllib.request

def serve(port, state):
    broken = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, code, text):
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/health":
                self._answer(500, "worker pool wedged\\n") if broken else self._answer(200, "ok\\n")
            else:
                self._answer(404, "not found\\n")

        def do_POST(self):
            if self.path == "/break":
                broken.append(True)
                self._answer(200, "broken\\n")
            else:
                self._answer(404, "not found\\n")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    with open(os.path.join(state, "service.pid"), "w") as f:
        f.write(str(os.getpid()))
    server.serve_forever()

def answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False

def healthy(port):
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200
    except Exception:
        return False

def start(port, state):
    log = open(os.path.join(state, "service.log"), "ab")
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve", str(port), state],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True)
    for _ in range(100):
        if healthy(port):
            print(f"demo-web running, pid {proc.pid}")
            return 0
        time.sleep(0.1)
    print("demo-web did not become healthy", file=sys.stderr)
    return 1

def stop(port, state):
    try:
        pid = int(open(os.path.join(state, "service.pid")).read())
        os.kill(pid, 15)
    except (OSError, ValueError):
        pass
    for _ in range(100):
        if not answers(port):
            return 0
        time.sleep(0.05)
    print("demo-web did not stop", file=sys.stderr)
    return 1

if __name__ == "__main__":
    command, port, state = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if command == "serve":
        serve(port, state)
    elif command == "start":
        sys.exit(start(port, state))
    elif command == "stop":
        sys.exit(stop(port, state))
    elif command == "restart":
        stop(port, state)
        sys.exit(start(port, state))
'''


@dataclass
class Scenario:
    """The demo's files and the flaky service's address."""

    home: Path
    port: int
    reports: Path

    @property
    def script(self) -> Path:
        """The flaky service's script."""
        return self.home / "flaky_service.py"

    @property
    def health_url(self) -> str:
        """What the probe and the validation check request."""
        return f"http://127.0.0.1:{self.port}/health"

    def service(self, command: str) -> list[str]:
        """The argv that starts, stops or restarts the service."""
        return [sys.executable, str(self.script), command, str(self.port), str(self.home)]


def write_scenario(home: Path, reports: Path) -> Scenario:
    """The service script, a probe in erdu.yaml and a restart runbook with HTTP validation."""
    scenario = Scenario(home, free_port(), reports)
    scenario.script.write_text(FLAKY_SERVICE, encoding="utf-8")
    (home / "runbooks").mkdir()
    runbook = {"runbooks": [{
        "name": "restart-demo-web",
        "description": "Restart demo-web when its health check fails.",
        "match": {"service": SERVICE},
        "diagnosis_hint": "demo-web's worker pool is wedged: /health returns 500 until the process restarts.",
        "actions": [{"action": "restart", "params": {"argv": scenario.service("restart")}, "timeout": 20}],
        "validation": {"check": "http", "url": scenario.health_url, "expect_status": [200], "timeout": 2,
                       "attempts": 10, "interval": 0.5},
        "limits": {"max_runs": 3, "per_seconds": 3600},
    }]}
    (home / "runbooks" / "demo-web.yaml").write_text(yaml.safe_dump(runbook, sort_keys=False), encoding="utf-8")
    config = {
        "runbooks_dir": str(home / "runbooks"),
        "reports_dir": str(reports),
        "alerts_dir": str(home / "alerts"),
        "state_dir": str(home / "var"),
        "monitors": {"probes": {"interval": 1, "checks": [{
            "name": SERVICE, "url": scenario.health_url, "expect_status": [200], "timeout": 2,
            "failures": 2, "service": SERVICE, "severity": "P2"}]}},
    }
    (home / "erdu.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return scenario


def _child_env(home: Path, urls: dict[str, str]) -> dict[str, str]:
    """The demo's own settings only: nothing from the caller's ERDU_* or erdu.yaml leaks in."""
    root = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ERDU_", "FLOWER_"))}
    path = env.get("PYTHONPATH")
    env.update(urls, ERDU_CONFIG=str(home / "erdu.yaml"), PYTHONUNBUFFERED="1",
               PYTHONPATH=root + (os.pathsep + path if path else ""))
    return env


def _rows(url: str, sql: str, params: tuple = ()) -> list[dict[str, Any]]:
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row, connect_timeout=3) as conn:
        return conn.execute(sql, params).fetchall()


class Narrator:
    """Turns what the pipeline wrote to Postgres into finished steps of the progress display."""

    def __init__(self, progress: Progress, database_url: str, broken_at: datetime) -> None:
        self.progress = progress
        self.url = database_url
        self.broken_at = broken_at
        self.tasks = {step: progress.add_task(f"[bold]{step}[/]", total=1) for step in STEPS}
        self.done: set[str] = set()
        self.incident: dict[str, Any] | None = None
        self.failure: str | None = None

    def finish(self, step: str, at: datetime, detail: str) -> None:
        """Mark a step done with when (seconds after the service broke) and what happened."""
        if step in self.done:
            return
        self.done.add(step)
        after = (at - self.broken_at).total_seconds()
        self.progress.update(self.tasks[step], completed=1,
                             description=f"[bold]{step:<11}[/] [dim]+{after:5.2f} s[/]  {escape(detail)}")

    def poll(self) -> bool:
        """Read the incident and its timeline; True once the report is written (or the incident escalated)."""
        rows = _rows(self.url, "SELECT * FROM incidents WHERE service = %s ORDER BY created_at LIMIT 1",
                     (SERVICE,))   # the incident the break opened (the stack is new: it is the first)
        if not rows:
            return False
        inc = self.incident = rows[0]
        self.finish("detection", inc["created_at"], f"{inc['id']}: {inc['title']} (the probe failed twice in a row)")
        timeline = _rows(self.url, "SELECT * FROM incident_timeline WHERE incident_id = %s ORDER BY id", (inc["id"],))
        by_status = {t["to_status"]: t for t in timeline if t["to_status"]}
        if "assigned" in by_status:
            t = by_status["assigned"]
            self.finish("assessment", t["at"], f"commander on {t['worker'] or '?'}: {t['what']}")
        if "investigating" in by_status:
            t = by_status["investigating"]
            self.finish("diagnosis", t["at"], f"diagnostician: {inc['root_cause'] or t['what']}")
        runs = _rows(self.url, "SELECT * FROM action_runs WHERE incident_id = %s AND action = 'restart'"
                     " AND finished_at IS NOT NULL", (inc["id"],))
        if runs:
            result = runs[0]["result"] or {}
            out = (result.get("output") or {}).get("stdout", "").strip()
            self.finish("restart", runs[0]["finished_at"], f"fixer ran restart: {result.get('detail', '')} {out}".strip())
        if "resolved" in by_status:
            self.finish("validation", by_status["resolved"]["at"],
                        f"fixer re-checked GET /health: {by_status['resolved']['what']}")
        if "closed" in by_status and inc["report_path"]:
            self.finish("report", by_status["closed"]["at"], f"resolver wrote {inc['report_path']}")
            return True
        if "escalated" in by_status:
            self.failure = by_status["escalated"]["what"]
            return True
        return False


def run_demo(console: Console, *, keep: bool = False, reports_dir: Path | None = None) -> int:
    """Run the whole scenario on a private Redis and Postgres; 0 when the incident closed with a report."""
    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="erdu-demo-"))
    os.chmod(home, 0o755)  # as root, the private Postgres runs as the postgres user and must reach it
    reports = (reports_dir or Path("var/reports")).resolve()
    servers: list[EmbeddedServer] = []
    supervisor: Supervisor | None = None
    scenario: Scenario | None = None
    keep_home = False
    try:
        console.print("[bold]ERDU demo[/]: a private stack, a flaky service, a probe and a restart runbook")
        scenario = write_scenario(home, reports)
        servers.append(start_redis(home / "var"))
        servers.append(start_postgres(home / "var"))
        urls = {"ERDU_REDIS_URL": servers[0].url, "ERDU_DATABASE_URL": servers[1].url}
        from erdu_tasks.store.migrate import migrate

        migrate(urls["ERDU_DATABASE_URL"])
        env = _child_env(home, urls)
        children = _children()
        supervisor = Supervisor(children, env, home / "var" / "logs", console, cwd=home)
        supervisor.start_all()
        _service(scenario, "start")
        slow = supervisor.wait_ready(START_SECONDS, lambda: False)
        if slow:
            raise ErduError(f"{', '.join(c.name for c in slow)} did not start; logs in {home / 'var' / 'logs'}")
        console.print(f"stack ready in {time.monotonic() - started:.1f} s: Redis {servers[0].url}, "
                      f"Postgres {servers[1].url}, {len(children)} processes; demo-web on {scenario.health_url}",
                      highlight=False)
        broken_at = datetime.now(timezone.utc)
        httpx.post(f"http://127.0.0.1:{scenario.port}/break", timeout=5).raise_for_status()
        console.print("[red]demo-web broken[/]: GET /health now answers 500", highlight=False)
        narrator = _narrate(console, urls["ERDU_DATABASE_URL"], supervisor, broken_at)
        if narrator.incident is None:
            console.print("[red]no incident was detected in time[/]")
            return 1
        incident_id = narrator.incident["id"]
        shown = subprocess.run([sys.executable, "-m", "erdu_tasks.cli", "incidents", "show", incident_id],
                               env={**env, "COLUMNS": str(console.width)}, cwd=home, capture_output=True,
                               text=True, timeout=60)
        console.print(f"\n$ erdu incidents show {incident_id}", highlight=False)
        console.out(shown.stdout.rstrip(), highlight=False)
        if shown.returncode != 0:
            last = (shown.stderr.strip().splitlines() or ["no output"])[-1]
            console.print(f"[red]erdu incidents show failed[/] (exit {shown.returncode}): {last}", highlight=False)
        if narrator.failure or "report" not in narrator.done:
            console.print(f"[red]the incident did not close[/]: {narrator.failure or 'timed out'}; "
                          f"logs in {home / 'var' / 'logs'}", highlight=False)
            keep_home = True
            return 1
        console.print(f"\n[green]done in {time.monotonic() - started:.1f} s[/]: {incident_id} closed by ERDU.\n"
                      f"report: {narrator.incident['report_path']}", highlight=False)
        if keep:
            _keep_running(console, urls)
        return 0
    finally:
        if supervisor is not None:
            supervisor.stop_all()   # first, so no fixer can restart the service behind our back
        if scenario is not None:
            subprocess.run(scenario.service("stop"), capture_output=True, timeout=30)
            _kill_leftovers(scenario.script)
        for server in reversed(servers):
            server.stop()
        link = home / "var" / "postgres"
        if link.is_symlink():
            shutil.rmtree(link.resolve(), ignore_errors=True)
        if not keep_home:
            shutil.rmtree(home, ignore_errors=True)


def _kill_leftovers(script: Path) -> None:
    """Any copy of the flaky service still running (a restart racing the stop) is ended too."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        if str(script) in (proc.info["cmdline"] or []):
            try:
                proc.kill()
                proc.wait(5)
            except (psutil.NoSuchProcess, psutil.TimeoutExpired):
                pass


def _children() -> list[Child]:
    """The role workers the scenario needs, and beat for the probe; no API, Flower or metrics."""
    from erdu_tasks.settings import Settings

    return build_children(Settings.model_construct(), with_api=False, with_flower=False, with_metrics=False,
                          roles=ROLES_NEEDED)


def _service(scenario: Scenario, command: str) -> None:
    done = subprocess.run(scenario.service(command), capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise ErduError(f"demo-web {command} failed: {done.stderr.strip() or done.stdout.strip()}")


def _narrate(console: Console, database_url: str, supervisor: Supervisor, broken_at: datetime) -> Narrator:
    columns = (SpinnerColumn(finished_text="[green]✓[/]"), TextColumn("{task.description}"))
    with Progress(*columns, console=console, transient=False) as progress:
        narrator = Narrator(progress, database_url, broken_at)
        deadline = time.monotonic() + SCENARIO_TIMEOUT
        while time.monotonic() < deadline:
            supervisor.tick()
            if narrator.poll():
                break
            time.sleep(0.2)
    return narrator


def _keep_running(console: Console, urls: dict[str, str]) -> None:
    console.print("The demo stack keeps running; from another shell:")
    for key, value in urls.items():
        console.print(f"  export {key}={value}", highlight=False)
    console.print("Ctrl-C stops it.")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
