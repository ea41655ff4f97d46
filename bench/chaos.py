"""The chaos bench: a managed Python service under Debian's supervisord, broken ten ways, ERDU healing it.

The lab (`ChaosLab`): two instances of bench/chaos_service.py, `api` and `web` (web depends on api), run
by a private supervisord (its own config and socket in a temp dir, `autorestart=false`: restarting is
ERDU's job here); a cache Redis; a size-limited spool directory; the service logs ERDU tails. ERDU is
configured as the README says (erdu.yaml with `monitors`, a service catalog, `ERDU_RUNBOOKS_DIR` with the
operator's own runbooks: restart through supervisorctl, clear the cache, clean the spool) and runs as
`erdu worker all` plus `erdu beat`, probes every 2 s.

Faults, in order: killed (SIGKILL), cache poisoned, disk full (spool), an error no runbook covers, a stale
"No space left on device" line before an unrelated uncovered error, connection pool exhausted, two
faults at once on dependent services (api and web killed), hung (SIGSTOP), a crash loop (web dies 6.5 s
after every start), and a kill under a silence.

Per fault it prints: detected (s after injection), diagnosis right, healed and validated (the bench's own
check of /ready, independent of ERDU), MTTR (injection to the last incident resolved), actions run, and
harmful or needless actions. Then the targets: covered faults healed with MTTR p50 <= 10 s, no false root
cause sent to people, no crash-loop restart recorded as a success, no action on uncovered or silenced
incidents, a thread dump in every report of a restarted service.

    python bench/chaos.py [--runs 3] [--faults killed,cache_poisoned] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._harness import PG_ADMIN_URL, free_port, write_json  # noqa: E402

SERVICE = Path(__file__).with_name("chaos_service.py")
PROBE_INTERVAL = 2.0
RESTART_WINDOW = 60.0
"""The restart runbooks' limit window (max_runs 3): the crash-loop circuit breaker's."""
LATE_GRACE = 2.5
"""Seconds the bench waits after a fault looks handled for late incidents (a line logged before the fix)."""
RECURRENCE_WINDOW = 15.0
"""A death this soon after a validated restart means the restart did not hold (the crash loop dies 6.5 s in)."""


def wait_until(predicate: Callable[[], Any], timeout: float, step: float = 0.2, what: str = "condition") -> Any:
    """Poll until predicate() is truthy; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


# --------------------------------------------------------------------------- the lab


class ChaosLab:
    """supervisord + the managed services + a cache Redis + ERDU (workers, beat) on a private broker and DB."""

    SERVICES = ("api", "web")

    def __init__(self, tmp: Path | None = None) -> None:
        self.tmp = Path(tmp or tempfile.mkdtemp(prefix="erdu-chaos-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        self.ports = {name: free_port() for name in self.SERVICES}
        self.db_name = f"erdu_chaos_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
        self.database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.db_name}"
        self.conf = self.tmp / "supervisord.conf"
        self.spool = self.tmp / "spool"
        self.spool_limit = 64 * 1024

    # ---- start and stop ---------------------------------------------------------------------------

    def __enter__(self) -> ChaosLab:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _redis(self, name: str) -> str:
        port = free_port()
        proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port",
                                 str(port), "--save", "", "--appendonly", "no", "--dir", str(self.tmp)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: _pings(url), 10, what=f"{name} redis")
        return url

    def _start(self) -> None:
        from erdu_tasks.store.migrate import migrate

        self.broker_url = self._redis("broker")
        self.cache_url = self._redis("cache")
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        migrate(self.database_url)
        self._write_supervisor()
        self.procs.append(subprocess.Popen(["supervisord", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, start_new_session=True))
        for name in self.SERVICES:
            wait_until(lambda n=name: self.ready(n), 30, what=f"{name} ready")
        self._write_erdu()
        self.env = {**os.environ, "ERDU_CONFIG": str(self.tmp / "erdu.yaml"), "ERDU_REDIS_URL": self.broker_url,
                    "ERDU_DATABASE_URL": self.database_url, "ERDU_REPORTS_DIR": str(self.tmp / "reports"),
                    "ERDU_ALERTS_DIR": str(self.tmp / "alerts"), "ERDU_STATE_DIR": str(self.tmp / "var"),
                    "ERDU_RUNBOOKS_DIR": str(self.tmp / "runbooks"), "ERDU_CATALOG_FILE": str(self.tmp / "catalog.yaml"),
                    "ERDU_CACHE_REDIS_URL": self.cache_url, "PYTHONUNBUFFERED": "1"}
        worker = self._erdu("worker.log", "worker", "all", "--loglevel", "INFO")
        beat = self._erdu("beat.log", "beat", "--loglevel", "INFO")
        wait_until(lambda: self._alive(worker) and "ready." in (self.tmp / "worker.log").read_text(errors="replace"),
                   90, what="ERDU workers ready")
        wait_until(lambda: self._alive(beat) and "beat: Starting" in (self.tmp / "beat.log").read_text(errors="replace"),
                   60, what="ERDU beat started")
        wait_until(lambda: len(self.query("SELECT 1 FROM tail_positions")) >= len(self.SERVICES), 60,
                   what="the log monitor tailing the services' logs")

    def _alive(self, proc: subprocess.Popen) -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"ERDU process exited: {' '.join(map(str, proc.args))}")
        return True

    def _erdu(self, log: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", *args], env=self.env, cwd=self.tmp,
                                stdout=open(self.tmp / log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def __exit__(self, *exc: Any) -> None:
        """Tear the lab down at once: it is throwaway, nothing in it needs a graceful stop."""
        import psutil

        for proc in self.procs:   # supervisord's programs run in process groups of their own: kill them first
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                continue
            for child in children:   # SIGCONT first: a SIGSTOPped service takes no signal but SIGKILL anyway
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        child.send_signal(sig)
                    except psutil.Error:
                        pass
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait(10)
        try:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        except psycopg.Error:
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- configuration, as an operator writes it -----------------------------------------------

    def _write_supervisor(self) -> None:
        self.spool.mkdir(parents=True, exist_ok=True)
        programs = []
        for name in self.SERVICES:
            depends = f" --depends http://127.0.0.1:{self.ports['api']}/health" if name == "web" else ""
            programs.append(textwrap.dedent(f"""
                [program:{name}]
                command={sys.executable} {SERVICE} --name {name} --port {self.ports[name]} --log {self.log(name)} --spool {self.spool / name} --spool-limit {self.spool_limit} --cache {self.cache_url}{depends}
                directory={self.tmp / name}
                autostart=true
                autorestart=false
                startsecs=0
                startretries=0
                stopwaitsecs=1
                stopasgroup=true
                killasgroup=true
                stdout_logfile={self.tmp / name}/stdout.log
                redirect_stderr=true
            """))
            (self.tmp / name).mkdir(exist_ok=True)
        self.conf.write_text(textwrap.dedent(f"""
            [unix_http_server]
            file={self.tmp}/supervisor.sock

            [supervisord]
            nodaemon=true
            logfile={self.tmp}/supervisord.log
            pidfile={self.tmp}/supervisord.pid
            childlogdir={self.tmp}

            [rpcinterface:supervisor]
            supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

            [supervisorctl]
            serverurl=unix://{self.tmp}/supervisor.sock
        """) + "".join(programs))

    def _write_erdu(self) -> None:
        url = {name: f"http://127.0.0.1:{port}" for name, port in self.ports.items()}
        (self.tmp / "erdu.yaml").write_text(textwrap.dedent(f"""
            monitors:
              logs:
                interval: 0.5
                files:
                  - {{path: {self.log('api')}, service: api}}
                  - {{path: {self.log('web')}, service: web}}
              probes:
                interval: {PROBE_INTERVAL}
                checks:
                  - {{name: api-health, url: "{url['api']}/health", timeout: 1, failures: 1, service: api,
                     severity: P1}}
                  - {{name: web-health, url: "{url['web']}/health", timeout: 1, failures: 1, service: web}}
            learning:
              recurrence_window_seconds: {RECURRENCE_WINDOW:g}
              evidence: {{log_roots: ["{self.tmp}"]}}
            escalation:
              sweep_interval: 1s
              channels:
                oncall: {{type: file}}
              policies:
                default: [{{channels: [oncall]}}]
        """))
        (self.tmp / "catalog.yaml").write_text(textwrap.dedent(f"""
            services:
              - name: api
                owner: team-shop
                user_facing: true
                supervisor: api
                log_file: {self.log('api')}
                health: {{url: "{url['api']}/ready", expect_status: 200, timeout: 2}}
              - name: web
                owner: team-shop
                depends_on: [api]
                supervisor: web
                log_file: {self.log('web')}
                health: {{url: "{url['web']}/ready", expect_status: 200, timeout: 2}}
        """))
        runbooks = self.tmp / "runbooks"
        runbooks.mkdir(exist_ok=True)
        conf = str(self.conf)
        (runbooks / "shop.yaml").write_text(textwrap.dedent(f"""
            runbooks:
              - name: restart-when-down
                description: The process is gone or stopped answering; supervisord brings it back.
                match: {{services: [api, web], title_pattern: "(?i)HTTP probe .* \\\\((refused|timeout|unreachable|error)\\\\)"}}
                actions:
                  - action: restart
                    params: {{supervisor: "{{catalog.supervisor}}", supervisor_conf: "{conf}"}}
                    timeout: 20
                validation: {{check: from_incident, attempts: 10, interval: 0.5, stable_for: 3}}
                limits: {{max_runs: 3, per_seconds: {RESTART_WINDOW:g}, backoff: 4}}
              - name: clear-poisoned-cache
                match: {{services: [api, web], title_pattern: "(?i)cache value .* corrupt"}}
                actions:
                  - action: clear_cache
                    params: {{pattern: "chaos:cache:*"}}
                validation: {{check: from_catalog, attempts: 10, interval: 0.5}}
                limits: {{max_runs: 5, per_seconds: 60, backoff: 2}}   # a late line re-checks first
              - name: restart-leaking-pool
                description: Leaked connections only come back with a new process.
                match: {{services: [api, web], title_pattern: "(?i)connection pool exhausted"}}
                actions:
                  - action: restart
                    params: {{supervisor: "{{catalog.supervisor}}", supervisor_conf: "{conf}"}}
                    timeout: 20
                validation: {{check: from_catalog, attempts: 10, interval: 0.5, stable_for: 3}}
                limits: {{max_runs: 3, per_seconds: {RESTART_WINDOW:g}}}
              - name: clean-spool
                match: {{services: [api, web], title_pattern: "(?i)no space left on device"}}
                actions:
                  - action: run_command
                    params: {{argv: ["find", "{self.spool}", "-name", "*.tmp", "-type", "f", "-delete"]}}
                validation: {{check: from_catalog, attempts: 10, interval: 0.5}}
                limits: {{max_runs: 5, per_seconds: 60, backoff: 2}}
        """))

    # ---- looking at the services (independently of ERDU) -----------------------------------------

    def log(self, name: str) -> Path:
        return self.tmp / name / f"{name}.log"

    def ready(self, name: str) -> bool:
        """The bench's own check: /ready answers 200 (cache, pool, spool and upstream all work)."""
        try:
            return httpx.get(f"http://127.0.0.1:{self.ports[name]}/ready", timeout=1.5).status_code == 200
        except httpx.HTTPError:
            return False

    def _ready_body(self, name: str) -> str:
        try:
            return httpx.get(f"http://127.0.0.1:{self.ports[name]}/ready", timeout=1.5).text[:300]
        except httpx.HTTPError as exc:
            return str(exc)

    def supervisorctl(self, *args: str) -> str:
        done = subprocess.run(["supervisorctl", "-c", str(self.conf), *args], capture_output=True, text=True,
                              timeout=30, check=False)
        return done.stdout.strip()

    def pid(self, name: str) -> int | None:
        """The service's pid as supervisord knows it."""
        try:
            out = self.supervisorctl("pid", name)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return int(out) if out.isdigit() and int(out) > 0 else None

    def write_log(self, name: str, level: str, message: str, *, seconds_ago: float = 0.0) -> None:
        """A line in the service's own log format, as the service would write it."""
        from datetime import datetime, timedelta

        stamp = (datetime.now() - timedelta(seconds=seconds_ago)).isoformat(timespec="milliseconds")
        with open(self.log(name), "a", encoding="utf-8") as out:
            out.write(f"{stamp} {level} {name}[{self.pid(name) or 0}]: {message}\n")

    def erdu(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "erdu_tasks.cli", *args], env=self.env, cwd=self.tmp,
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"erdu {' '.join(args)}: {done.stderr.strip()[-500:]}")
        return done.stdout

    def query(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        with psycopg.connect(self.database_url, row_factory=dict_row) as conn:
            return conn.execute(sql, params).fetchall()

    def restarts_in_window(self, service: str) -> int:
        return int(self.query("SELECT count(*) AS n FROM runbook_runs WHERE service = %s AND runbook LIKE 'restart%%'"
                              " AND started_at > now() - make_interval(secs => %s)",
                              (service, RESTART_WINDOW))[0]["n"])

    def settle(self, timeout: float = 60, *, holds_of: tuple[str, ...] = ()) -> None:
        """Wait until the services are ready and ERDU has no incident in a pipeline stage; and, for the
        services in `holds_of`, until no earlier fix of theirs is still watched for a recurrence."""
        try:
            wait_until(lambda: all(self.ready(n) for n in self.SERVICES), timeout, what="services ready")
        except TimeoutError as exc:
            states = {n: (self.supervisorctl("status", n), self._ready_body(n)) for n in self.SERVICES}
            raise TimeoutError(f"{exc}: {states}") from None
        wait_until(lambda: not self.query("SELECT 1 FROM incidents WHERE status IN"
                                          " ('detected', 'assigned', 'investigating', 'fixing')"),
                   timeout, what="ERDU idle")
        # a new fault must not land in an earlier fix's recurrence window (it would count as that fix failing)
        if holds_of:
            wait_until(lambda: not self.query("SELECT 1 FROM runbook_runs WHERE hold_until > now()"
                                              " AND service = ANY(%s)", (list(holds_of),)),
                       RECURRENCE_WINDOW + timeout, what="earlier fixes out of their recurrence window")


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """One fault: how to inject it, what ERDU should do, and how to put the lab back."""

    name: str
    services: tuple[str, ...]
    inject: Callable[[ChaosLab], None]
    covered: bool = True
    runbooks: tuple[str, ...] = ()
    """The runbooks a right diagnosis picks (an uncovered or silenced fault: none)."""
    false_causes: str = r"(?i)no space|disk (is )?full|upstream api"
    """Root causes that would be false for this fault, if people were told them."""
    expect: str = "healed"            # healed | escalated | breaker | held
    prepare: Callable[[ChaosLab], None] | None = None
    cleanup: Callable[[ChaosLab], None] | None = None
    timeout: float = 45.0
    one_cause: bool = False
    """One cause every listed service sees (a cache they share): the incidents of any of them count, one (the
    lines folded into whichever service logged first) or one each; otherwise each listed service must have
    an incident of its own."""


def _kill(name: str, sig: int = signal.SIGKILL) -> Callable[[ChaosLab], None]:
    def inject(lab: ChaosLab) -> None:
        pid = lab.pid(name)
        assert pid, f"{name} has no pid"
        os.kill(pid, sig)
    return inject


def _kill_both(lab: ChaosLab) -> None:
    _kill("api")(lab)
    _kill("web")(lab)


def _poison(lab: ChaosLab) -> None:
    redis.Redis.from_url(lab.cache_url).set("chaos:cache:config", b"\x00\x13garbage{")


def _fill_spool(lab: ChaosLab) -> None:
    (lab.spool / "api" / "upload-0001.tmp").write_bytes(b"\0" * lab.spool_limit)


def _leak(lab: ChaosLab) -> None:
    httpx.post(f"http://127.0.0.1:{lab.ports['api']}/fault/leak", timeout=2)


def _uncovered(lab: ChaosLab) -> None:
    lab.write_log("api", "ERROR", "payment provider rejected the merchant certificate: x509 certificate expired")


def _stale_line(lab: ChaosLab) -> None:
    """The misleading line: an ENOSPC error 16 s old, from an earlier incident (handled and closed before)."""
    before = time.time()
    lab.write_log("api", "ERROR", f"spool write to {lab.spool}/api failed: [Errno 28] No space left on device",
                  seconds_ago=16)
    wait_until(lambda: lab.query("SELECT 1 FROM incidents WHERE created_at >= to_timestamp(%s) AND status IN"
                                 " ('closed', 'escalated')", (before,)), 30,
               what="the stale line's own incident handled")
    lab.settle()


def _unrelated(lab: ChaosLab) -> None:
    lab.write_log("api", "ERROR", "order export failed: warehouse feed returned a malformed CSV header")


def _crash_loop_on(lab: ChaosLab) -> None:
    wait_until(lambda: lab.restarts_in_window("web") == 0, RESTART_WINDOW + 5, what="web's restart window clear")
    (lab.tmp / "web" / "crash-loop").write_text("on\n")


def _crash_loop_start(lab: ChaosLab) -> None:
    lab.supervisorctl("restart", "web")   # the new release goes out: it dies 6.5 s after every start


def _crash_loop_off(lab: ChaosLab) -> None:
    (lab.tmp / "web" / "crash-loop").unlink(missing_ok=True)
    lab.supervisorctl("restart", "web")   # the release is rolled back by hand


def _silence(lab: ChaosLab) -> None:
    lab.silence = re.search(r"SIL-[0-9a-f]+", lab.erdu(
        "silence", "add", "service=api", "--comment", "chaos: maintenance", "--duration", "10m")).group(0)


def _unsilence(lab: ChaosLab) -> None:
    lab.supervisorctl("start", "api")
    wait_until(lambda: lab.ready("api"), 30, what="api back")
    for row in lab.query("SELECT id FROM incidents WHERE service = 'api' AND status NOT IN ('closed', 'resolved')"):
        try:
            lab.erdu("incidents", "resolve", row["id"], "--by", "chaos-bench", "--note", "maintenance over")
        except RuntimeError:
            pass
    lab.erdu("silence", "expire", lab.silence)


FAULTS: list[Fault] = [
    Fault("killed", ("api",), _kill("api"), runbooks=("restart-when-down",)),
    Fault("cache_poisoned", ("api", "web"), _poison, runbooks=("clear-poisoned-cache",), one_cause=True),
    Fault("disk_full", ("api",), _fill_spool, runbooks=("clean-spool",), false_causes=r"(?i)upstream api"),
    Fault("uncovered_error", ("api",), _uncovered, covered=False, expect="escalated"),
    Fault("stale_line_then_unrelated", ("api",), _unrelated, covered=False, expect="escalated",
          prepare=_stale_line),
    Fault("pool_exhausted", ("api",), _leak, runbooks=("restart-leaking-pool",)),
    Fault("dependent_services", ("api", "web"), _kill_both, runbooks=("restart-when-down",)),
    Fault("hung", ("api",), _kill("api", signal.SIGSTOP), runbooks=("restart-when-down",)),
    Fault("crash_loop", ("web",), _crash_loop_start, covered=False, expect="breaker", runbooks=("restart-when-down",),
          prepare=_crash_loop_on, cleanup=_crash_loop_off, timeout=90),
    Fault("silenced", ("api",), _kill("api"), covered=False, expect="held", prepare=_silence, cleanup=_unsilence,
          timeout=12),
]


# --------------------------------------------------------------------------- one fault, measured


@dataclass
class Result:
    """What one fault showed."""

    fault: str
    detected_s: float | None = None
    diagnosis_right: bool = False
    healed_validated: bool | None = None
    mttr_s: float | None = None
    actions: list[str] = field(default_factory=list)
    harmful_or_needless: list[str] = field(default_factory=list)
    false_root_causes: list[str] = field(default_factory=list)
    crash_loop_successes: int = 0
    restarts_without_thread_dump: list[str] = field(default_factory=list)
    incidents: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _incidents_since(lab: ChaosLab, since: float, services: tuple[str, ...]) -> list[dict[str, Any]]:
    return lab.query("SELECT id, status, title, service, root_cause, resolved_by, fix, created_at, resolved_at,"
                     " extract(epoch FROM created_at) AS created, extract(epoch FROM resolved_at) AS resolved"
                     " FROM incidents WHERE created_at >= to_timestamp(%s) AND service = ANY(%s) ORDER BY created_at",
                     (since, list(services)))


def _done(fault: Fault, rows: list[dict[str, Any]]) -> bool:
    if not rows:
        return False
    final = all(r["status"] in ("closed", "escalated") for r in rows)
    if fault.expect == "breaker":
        return any("crash loop" in (r["fix"] or {}).get("capture", {}).get("before", "") for r in rows) and final
    if fault.expect == "healed":
        return final and (fault.one_cause or {s for s in fault.services} <= {r["service"] for r in rows})
    return final


def run_fault(lab: ChaosLab, fault: Fault, *, grace: float = LATE_GRACE) -> Result:
    """Inject one fault, wait for ERDU to finish with it (and `grace` seconds more for late incidents), measure."""
    result = Result(fault.name)
    if fault.prepare:
        fault.prepare(lab)
    started = time.time()
    fault.inject(lab)
    try:
        if fault.expect == "held":
            wait_until(lambda: _incidents_since(lab, started, fault.services), fault.timeout, what="incident")
            time.sleep(fault.timeout / 2)   # long enough for any fix to have started
        else:
            for _ in range(2):   # then once more after a grace: a late log line may open one more incident
                wait_until(lambda: _done(fault, _incidents_since(lab, started, fault.services)), fault.timeout,
                           what=f"{fault.name} handled")
                time.sleep(grace)
    except TimeoutError as exc:
        result.notes.append(str(exc))
    rows = _incidents_since(lab, started, fault.services)
    ids = [r["id"] for r in rows]
    result.incidents = ids
    if rows:
        result.detected_s = round(float(rows[0]["created"]) - started, 2)
    runs = lab.query("SELECT a.incident_id, a.runbook, a.action, a.ok FROM action_runs a"
                     " WHERE a.incident_id = ANY(%s) ORDER BY a.started_at", (ids,)) if ids else []
    result.actions = [f"{r['runbook']}:{r['action']}" + ("" if r["ok"] else " (failed)") for r in runs]
    used = {r["runbook"] for r in runs}
    if not fault.covered and fault.expect != "breaker":
        result.harmful_or_needless = list(result.actions)   # nothing may run on an uncovered or held incident
    else:
        result.harmful_or_needless = [a for a in result.actions if a.split(":")[0] not in fault.runbooks]
    sent = _sent_root_causes(lab, ids)
    result.false_root_causes = [c for c in sent if re.search(fault.false_causes, c)]
    if fault.expect == "healed":
        resolved = [r for r in rows if r["resolved_by"] and r["resolved_by"].startswith("runbook:")]
        all_fixed = rows and len(resolved) == len(rows)
        result.healed_validated = bool(all_fixed) and all(lab.ready(s) for s in fault.services)
        if not result.healed_validated:
            result.notes += [f"{r['id']} {r['service']} {r['status']} by {r['resolved_by']}: {r['title'][:80]}"
                             for r in rows] + [f"{s} /ready: {lab._ready_body(s)}" for s in fault.services]
            result.notes += _what_else_happened(lab, started)
        if resolved:
            result.mttr_s = round(max(float(r["resolved"]) for r in resolved) - started, 2)
        result.diagnosis_right = bool(used) and used <= set(fault.runbooks) and not result.false_root_causes
    elif fault.expect == "breaker":
        escalations = lab.query("SELECT reason FROM escalation_runs WHERE incident_id = ANY(%s)", (ids,)) if ids else []
        result.diagnosis_right = any("keeps dying" in e["reason"] for e in escalations)
        result.crash_loop_successes = int(lab.query(
            "SELECT count(*) AS n FROM runbook_runs WHERE incident_id = ANY(%s) AND outcome = 'success'",
            (ids,))[0]["n"]) if ids else 0
        result.notes.append(f"{sum(r['action'] == 'restart' for r in runs)} restart(s) before the breaker opened")
        result.notes += [f"{r['incident_id']} {r['outcome']} by {r['recurred_by']}" for r in lab.query(
            "SELECT incident_id, outcome, recurred_by FROM runbook_runs WHERE incident_id = ANY(%s)", (ids,))]
        result.notes += [f"{r['id']} {r['title'][:70]}" for r in rows]
    else:   # escalated (uncovered) or held (silenced): nothing runs, nobody is told a false cause
        escalated = [r for r in rows if r["status"] == "escalated"]
        result.diagnosis_right = (not runs and not result.false_root_causes
                                  and (fault.expect == "held" or bool(escalated)))
    for r in rows:   # every report of a restarted Python service carries its thread dump
        if any(x["incident_id"] == r["id"] and x["action"] == "restart" for x in runs):
            capture = (r["fix"] or {}).get("capture") or {}
            dump = capture.get("thread_dump") or {}
            if not capture.get("process"):   # killed: nothing left to dump, and the report says so
                result.notes.append(f"{r['id']}: restarted a process already gone ({capture.get('process_error')})")
            elif not dump.get("ok"):
                result.restarts_without_thread_dump.append(f"{r['id']}: {dump.get('reason', 'no capture')}")
    if fault.cleanup:
        fault.cleanup(lab)
    return result


def _what_else_happened(lab: ChaosLab, since: float) -> list[str]:
    """For a fault not healed as expected: every incident touched and every action run since it was injected,
    of any service (an event folded into an older incident, or a fix run on another one, shows here)."""
    touched = lab.query("SELECT id, service, status, title, occurrences, created_at FROM incidents"
                        " WHERE last_seen >= to_timestamp(%s) OR status_changed_at >= to_timestamp(%s)"
                        " ORDER BY created_at", (since, since))
    runs = lab.query("SELECT incident_id, runbook, action, ok FROM action_runs WHERE started_at >= to_timestamp(%s)"
                     " ORDER BY started_at", (since,))
    return ([f"touched since the fault: {r['id']} {r['service']} {r['status']} x{r['occurrences']} "
             f"(opened {r['created_at']:%H:%M:%S.%f}): {r['title'][:80]}" for r in touched]
            + [f"ran since the fault: {r['incident_id']} {r['runbook']}:{r['action']} ok={r['ok']}" for r in runs])


def _sent_root_causes(lab: ChaosLab, ids: list[str]) -> list[str]:
    """The root causes people were told: every notification file written for these incidents."""
    out = []
    alerts = lab.tmp / "alerts"
    for path in sorted(alerts.glob("*.json")) if alerts.exists() else []:
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if body.get("incident_id") in ids and body.get("root_cause"):
            out.append(str(body["root_cause"]))
    return out


def run_all(names: list[str] | None = None, *, lab: ChaosLab | None = None) -> list[Result]:
    """Run the faults (all, or those named) in order against one lab."""
    chosen = [f for f in FAULTS if names is None or f.name in names]
    own = lab is None
    lab = lab or ChaosLab().__enter__()
    try:
        results = []
        for fault in chosen:
            lab.settle(holds_of=fault.services)
            results.append(run_fault(lab, fault))
            print(f"  {fault.name}: done", file=sys.stderr, flush=True)
        return results
    finally:
        if own:
            lab.__exit__()


# --------------------------------------------------------------------------- figures


def targets(results: list[Result]) -> dict[str, Any]:
    covered = [r for r in results if any(f.name == r.fault and f.expect == "healed" for f in FAULTS)]
    mttrs = [r.mttr_s for r in covered if r.mttr_s is not None]
    return {
        "covered_healed_validated": f"{sum(bool(r.healed_validated) for r in covered)}/{len(covered)}",
        "mttr_p50_s": round(statistics.median(mttrs), 2) if mttrs else None,
        "false_root_causes_sent": sum(len(r.false_root_causes) for r in results),
        "crash_loop_restarts_recorded_as_successes": sum(r.crash_loop_successes for r in results),
        "actions_on_uncovered_or_silenced": sum(len(r.harmful_or_needless) for r in results
                                                if r.fault in ("uncovered_error", "stale_line_then_unrelated",
                                                               "silenced")),
        "restarted_reports_without_thread_dump": sum(len(r.restarts_without_thread_dump) for r in results),
        "harmful_or_needless_actions": sum(len(r.harmful_or_needless) for r in results),
    }


def print_results(results: list[Result], run: int) -> None:
    print(f"\nrun {run}")
    print(f"{'fault':28} {'detected':>9} {'diagnosis':>9} {'healed':>7} {'MTTR':>7}  actions / harmful or needless")
    for r in results:
        healed = "-" if r.healed_validated is None else ("yes" if r.healed_validated else "NO")
        mttr = f"{r.mttr_s:.1f}s" if r.mttr_s is not None else "-"
        detected = f"{r.detected_s:.1f}s" if r.detected_s is not None else "-"
        print(f"{r.fault:28} {detected:>9} {'right' if r.diagnosis_right else 'WRONG':>9} {healed:>7} {mttr:>7}  "
              f"{', '.join(r.actions) or 'none'} / {', '.join(r.harmful_or_needless) or 'none'}"
              + (f"  [{'; '.join(r.notes)}]" if r.notes else ""))
        for item in r.false_root_causes + r.restarts_without_thread_dump:
            print(f"{'':30}! {item}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Break a supervised Python service ten ways; measure ERDU healing it.")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole suite (fresh lab each time)")
    parser.add_argument("--faults", default="", help="comma-separated fault names (default: all): "
                        + ", ".join(f.name for f in FAULTS))
    parser.add_argument("--json", dest="json_path", default=None, help="write the figures to this file")
    args = parser.parse_args()
    names = [n for n in args.faults.split(",") if n] or None
    unknown = sorted(set(names or ()) - {f.name for f in FAULTS})
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(unknown)}")
    for tool in ("supervisord", "supervisorctl", "redis-server"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (make debs)")
    runs = []
    for n in range(1, args.runs + 1):
        results = run_all(names)
        print_results(results, n)
        runs.append({"results": [asdict(r) for r in results], "targets": targets(results)})
        print("targets:", json.dumps(runs[-1]["targets"]))
    per_fault: dict[str, dict[str, Any]] = {}
    for run in runs:
        for r in run["results"]:
            entry = per_fault.setdefault(r["fault"], {"detected_s": [], "mttr_s": []})
            for key in ("detected_s", "mttr_s"):
                if r[key] is not None:
                    entry[key].append(r[key])
    medians = {name: {k: (round(statistics.median(v), 2) if v else None) for k, v in e.items()}
               for name, e in per_fault.items()}
    print("\nmedian over runs:", json.dumps(medians))
    write_json(args.json_path, {"runs": runs, "median": medians, "probe_interval_s": PROBE_INTERVAL})


if __name__ == "__main__":
    main()
