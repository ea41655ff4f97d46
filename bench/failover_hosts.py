"""Several hosts on one machine: a host SIGKILLed mid-burst, and a host's link cut and healed.

Network namespaces joined by veth pairs stand for the machines (root is needed for `ip netns`):

    root (this process) ── infra: a private redis-server and a private Postgres cluster
                              ├── host-1: `erdu worker all --hostname host-1` and `erdu beat`
                              └── host-2: the same

Each worker host reaches the infrastructure host over its own link, so cutting one link (`ip link set
... down` on the infrastructure side: packets vanish, connections hang, as when a switch port dies)
partitions exactly one host. Every event sent opens its own incident (a distinct dedup_key), whose
runbook runs one command that appends the incident's service to a file: a line written twice is an
action run twice.

The figures of a scenario: incidents sent, lost (sent, but no incident of it final), duplicated (a
second incident for one event, or a second resolve or close of one incident), stuck (not final when
the wait ended), actions run twice, and the seconds from the fault until every incident was final.

    .venv/bin/python -m bench.failover_hosts                  # both scenarios, ERDU's default timings
    .venv/bin/python -m bench.failover_hosts host-kill --runs 3 --incidents 120 --json host-kill.json

The topology is also what tests/integration/test_hosts.py runs its compact scenarios on.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from bench._harness import write_json

FINAL = ("closed", "escalated")
REDIS_PORT = 6379
PG_PORT = 5432
TITLE = "Host drill: slow disk on volume"
"""The message of every scenario event; the scenario runbook matches it."""


class Unavailable(RuntimeError):
    """This machine cannot build network namespaces (not root, no iproute2, no server binaries)."""


def missing_prerequisites() -> str | None:
    """Why namespaces cannot be built here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for exe in ("ip", "redis-server", "runuser"):
        if shutil.which(exe) is None:
            return f"{exe} is not on PATH"
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")) and shutil.which("initdb") is None:
        return "the Postgres server binaries (initdb, pg_ctl) are not installed"
    return None


def _pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    return str(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)[0])


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stdout}{done.stderr}")
    return done


def _free_octet() -> int:
    """A second octet of 10.x.0.0/16 that no address of this machine's root namespace uses."""
    taken = _run("ip", "-4", "-o", "addr").stdout
    for _ in range(50):
        octet = 100 + secrets.randbelow(150)
        if f" 10.{octet}." not in taken:
            return octet
    raise Unavailable("no free 10.x.0.0/16 network for the namespaces")


@dataclass
class Host:
    """One worker host: its namespace, its address, the link to cut, the processes it runs."""

    name: str
    netns: str
    infra_ip: str          # how this host reaches the infrastructure host
    infra_end: str         # the link's end inside the infrastructure namespace
    procs: list[subprocess.Popen]


class Hosts:
    """An infrastructure namespace (Redis, Postgres) and worker hosts, each in its own namespace.

    Use as a context manager: leaving it (even on an exception) kills every process it started, stops
    Postgres, deletes the namespaces (which removes their veth pairs) and the temporary directory.
    """

    def __init__(self, hosts: int = 2, *, env: dict[str, str] | None = None, beats: tuple[int, ...] | None = None,
                 action_sleep: float = 0.0) -> None:
        self.count = hosts
        self.extra_env = env or {}
        self.beats = tuple(range(hosts)) if beats is None else beats   # which hosts (by index) run a beat
        self.action_sleep = action_sleep
        self.tag = secrets.token_hex(3)
        self.infra = f"erdu-{self.tag}-infra"
        self.hosts: list[Host] = []
        self.namespaces: list[str] = []
        self.infra_procs: list[subprocess.Popen] = []
        self.pg_data: Path | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix="erdu-hosts-"))
        os.chmod(self.tmp, 0o755)
        self.effect = self.tmp / "effect.log"
        self._client = None

    # ---- building and tearing down --------------------------------------------------------------

    def __enter__(self) -> "Hosts":
        why = missing_prerequisites()
        if why:
            raise Unavailable(why)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _netns(self, name: str) -> str:
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)
        _run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def _link(self, a_ns: str | None, a_if: str, a_ip: str, b_ns: str, b_if: str, b_ip: str) -> None:
        """A veth pair: a_if (in a_ns, or the root namespace) <-> b_if (in b_ns), a /30 between them."""
        _run("ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if)
        if a_ns is None:
            self.root_if = a_if   # the root namespace's end is not removed with a namespace
        _run("ip", "link", "set", b_if, "netns", b_ns)
        if a_ns is not None:
            _run("ip", "link", "set", a_if, "netns", a_ns)
        for ns, ifname, ip in ((a_ns, a_if, a_ip), (b_ns, b_if, b_ip)):
            prefix = ("ip",) if ns is None else ("ip", "-n", ns)
            _run(*prefix, "addr", "add", f"{ip}/30", "dev", ifname)
            _run(*prefix, "link", "set", ifname, "up")

    def _build(self) -> None:
        octet = _free_octet()
        self._netns(self.infra)
        self.root_ip = f"10.{octet}.0.1"
        self._link(None, f"e{self.tag}r", f"10.{octet}.0.2", self.infra, f"e{self.tag}ri", self.root_ip)
        for k in range(1, self.count + 1):
            ns = self._netns(f"erdu-{self.tag}-h{k}")
            self._link(ns, f"e{self.tag}h{k}", f"10.{octet}.{k}.2", self.infra, f"e{self.tag}i{k}",
                       f"10.{octet}.{k}.1")
            self.hosts.append(Host(f"host-{k}", ns, f"10.{octet}.{k}.1", f"e{self.tag}i{k}", []))
        self._start_redis()
        self._start_postgres()
        self.redis_url = f"redis://{self.root_ip}:{REDIS_PORT}/0"
        self.database_url = f"postgresql://postgres@{self.root_ip}:{PG_PORT}/erdu"
        from erdu_tasks.store.migrate import migrate

        migrate(self.database_url)
        self._write_runbook()
        for host in self.hosts:
            self.start_host(host, wait=False)
        for host in self.hosts:
            self.wait_ready(host)

    def _start_redis(self) -> None:
        log = open(self.tmp / "redis.log", "ab")
        self.infra_procs.append(subprocess.Popen(
            ["ip", "netns", "exec", self.infra, shutil.which("redis-server"), "--bind", "0.0.0.0",
             "--protected-mode", "no", "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no",
             "--dir", str(self.tmp), "--maxmemory-policy", "noeviction"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def _as_postgres(self, *argv: str) -> subprocess.CompletedProcess:
        return _run("ip", "netns", "exec", self.infra, "runuser", "-u", "postgres", "--", *argv)

    def _start_postgres(self) -> None:
        root = self.tmp / "pg"
        root.mkdir()
        (root / "sock").mkdir()
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "sock", "postgres", "postgres")
        data = root / "data"
        self._as_postgres(_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                          "--no-sync", "--no-instructions")
        self.pg_data = data
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {PG_PORT}\nlisten_addresses = '*'\nunix_socket_directories = '{root / 'sock'}'\n"
                       "fsync = off\nmax_connections = 200\nshared_buffers = 32MB\n")
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write("host all all 10.0.0.0/8 trust\n")
        self._as_postgres(_pg_bin("pg_ctl"), "-D", str(data), "-l", str(root / "postgres.log"), "-w", "-t", "60",
                          "start")
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(f"postgresql://postgres@10.{self.root_ip.split('.')[1]}.0.1:{PG_PORT}/postgres",
                                     autocommit=True, connect_timeout=2) as conn:
                    conn.execute("CREATE DATABASE erdu")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise

    def _write_runbook(self) -> None:
        directory = self.tmp / "runbooks"
        directory.mkdir()
        sleep = f"; sleep {self.action_sleep:g}" if self.action_sleep else ""
        (directory / "drill.yaml").write_text(textwrap.dedent(f"""
            runbooks:
              - name: drill-remedy
                match: {{title_pattern: "(?i)host drill"}}
                actions:
                  - action: run_command
                    params: {{argv: ["sh", "-c", "echo \\"$0\\" >> {self.effect}{sleep}", "{{service}}"]}}
                    timeout: 20
                validation: {{check: noop}}
                limits: {{max_runs: 100000, per_seconds: 3600}}
        """))
        self.runbooks = directory

    def env_for(self, host: Host) -> dict[str, str]:
        """The environment of one host's processes: the infrastructure as that host reaches it."""
        home = self.tmp / host.name
        home.mkdir(exist_ok=True)
        env = {**os.environ,
               "ERDU_REDIS_URL": f"redis://{host.infra_ip}:{REDIS_PORT}/0",
               "ERDU_DATABASE_URL": f"postgresql://postgres@{host.infra_ip}:{PG_PORT}/erdu",
               "ERDU_REPORTS_DIR": str(home / "reports"), "ERDU_ALERTS_DIR": str(home / "alerts"),
               "ERDU_STATE_DIR": str(home / "var"), "ERDU_RUNBOOKS_DIR": str(self.runbooks),
               "PYTHONUNBUFFERED": "1", **self.extra_env}
        env.pop("ERDU_CONFIG", None)
        return env

    def _spawn(self, host: Host, what: str, *argv: str) -> subprocess.Popen:
        home = self.tmp / host.name
        home.mkdir(exist_ok=True)
        log_path = home / f"{what}-{len(host.procs)}.log"
        proc = subprocess.Popen(["ip", "netns", "exec", host.netns, sys.executable, "-m", "erdu_tasks.cli", *argv],
                                env=self.env_for(host), cwd=home, stdout=open(log_path, "ab"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        proc.log_path = log_path
        proc.what = what
        host.procs.append(proc)
        return proc

    def start_host(self, host: Host, *, wait: bool = True) -> None:
        """Boot a host: one worker serving every role, and a beat (one of the beats holds the lock)."""
        self._spawn(host, "worker", "worker", "all", "--hostname", host.name, "--loglevel", "INFO")
        if self.hosts.index(host) in self.beats:
            self._spawn(host, "beat", "beat", "--loglevel", "INFO")
        if wait:
            self.wait_ready(host)

    def wait_ready(self, host: Host, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        for proc in host.procs:
            if proc.poll() is not None:
                continue
            mark = "ready." if proc.what == "worker" else "beat: Starting"
            while mark not in proc.log_path.read_text(errors="replace"):
                if proc.poll() is not None:
                    raise RuntimeError(f"{host.name} {proc.what} exited: "
                                       + proc.log_path.read_text(errors="replace")[-2000:])
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{host.name} {proc.what} not ready after {timeout:.0f} s")
                time.sleep(0.2)

    def close(self) -> None:
        """Kill everything started, stop Postgres, delete the namespaces and the temporary directory."""
        for host in self.hosts:
            self.kill_host(host)
        for proc in self.infra_procs:
            _kill_group(proc)
        if self.pg_data is not None:
            _stop_postgres(self.pg_data)
            self.pg_data = None
        for ns in reversed(self.namespaces):
            _run("ip", "netns", "delete", ns, check=False)
        self.namespaces.clear()
        if getattr(self, "root_if", None):
            _run("ip", "link", "delete", self.root_if, check=False)   # gone with its peer's namespace already
            self.root_if = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ---- faults -----------------------------------------------------------------------------------

    def kill_host(self, host: Host) -> None:
        """The host dies: SIGKILL to every process it runs (worker pool children included), no goodbye."""
        for proc in host.procs:
            _kill_group(proc)
        host.procs.clear()

    def cut(self, host: Host) -> None:
        """Cut the host's link at the infrastructure's end: its packets vanish, its connections hang."""
        _run("ip", "-n", self.infra, "link", "set", host.infra_end, "down")

    def heal(self, host: Host) -> None:
        _run("ip", "-n", self.infra, "link", "set", host.infra_end, "up")

    # ---- the load and the count -------------------------------------------------------------------

    @property
    def client(self):
        if self._client is None:
            from celery import Celery

            self._client = Celery("drill-producer", broker=self.redis_url)
            self._client.conf.update(task_serializer="json", accept_content=["json"])
        return self._client

    def send(self, keys: list[str]) -> None:
        """One event per key, each its own incident (dedup_key), its service named after the key."""
        with self.client.connection_for_write() as conn:
            for key in keys:
                self.client.send_task("erdu.ingest", args=({"message": f"{TITLE} {key}", "source": "drill",
                                                            "service": key, "dedup_key": key},),
                                      queue="ingest", routing_key="ingest", connection=conn)

    def rows(self, sql: str, params=()) -> list[dict]:
        with psycopg.connect(self.database_url, row_factory=dict_row, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()

    def fixes_started(self) -> int:
        return len(self.effect.read_text().splitlines()) if self.effect.exists() else 0

    def figures(self, name: str, keys: list[str], seconds: float | None) -> "Figures":
        """What became of the events sent with these keys (other scenarios' incidents are not counted)."""
        wanted = set(keys)
        incidents = [r for r in self.rows("SELECT id, status, error_details->>'dedup_key' AS key FROM incidents")
                     if r["key"] in wanted]
        by_key: dict[str, list[str]] = {}
        for r in incidents:
            by_key.setdefault(r["key"], []).append(r["status"])
        final = {k for k, statuses in by_key.items() if any(s in FINAL for s in statuses)}
        twice = self.rows("""
            SELECT coalesce(sum(n - 1), 0) AS n FROM (
                SELECT incident_id, to_status, count(*) AS n FROM incident_timeline
                WHERE to_status IN ('resolved', 'closed') AND incident_id = ANY(%s)
                GROUP BY incident_id, to_status) t
            WHERE n > 1""", ([r["id"] for r in incidents],))[0]["n"]
        lines = [k for k in (self.effect.read_text().splitlines() if self.effect.exists() else []) if k in wanted]
        return Figures(
            scenario=name, sent=len(keys), closed=sum(s.count("closed") for s in by_key.values()),
            escalated=sum(s.count("escalated") for s in by_key.values()),
            lost=sum(1 for k in keys if k not in final),
            duplicated=sum(len(s) - 1 for s in by_key.values()) + int(twice),
            stuck=sum(1 for s in by_key.values() for status in s if status not in FINAL),
            actions_twice=sum(lines.count(k) - 1 for k in set(lines)),
            seconds_to_final=seconds)


def _stop_postgres(data: Path) -> None:
    """Immediate shutdown (SIGQUIT to the postmaster): the cluster is thrown away next."""
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGQUIT)
    except (FileNotFoundError, ValueError, IndexError, ProcessLookupError):
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


@dataclass
class Figures:
    """What every host scenario reports (and the tests assert)."""

    scenario: str
    sent: int
    closed: int
    escalated: int
    lost: int
    duplicated: int
    stuck: int
    actions_twice: int
    seconds_to_final: float | None

    def show(self) -> str:
        took = "never" if self.seconds_to_final is None else f"{self.seconds_to_final:.1f} s"
        return (f"[{self.scenario}] sent {self.sent}, closed {self.closed}, escalated {self.escalated}, "
                f"lost {self.lost}, duplicated {self.duplicated}, stuck {self.stuck}, "
                f"actions twice {self.actions_twice}, all final {took} after the fault")


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


def host_kill(hosts: Hosts, incidents: int, *, victim: int = 0, prefix: str = "kill", timeout: float = 120) -> Figures:
    """A burst; once a quarter of its fixes have run, SIGKILL one host (the first); time until all are final."""
    victim_host = hosts.hosts[victim]
    keys = [f"{prefix}-{i}" for i in range(incidents)]
    before = hosts.fixes_started()
    hosts.send(keys)
    _wait(lambda: hosts.fixes_started() - before >= max(1, incidents // 4), 60, "the burst reaching the fixers")
    hosts.kill_host(victim_host)
    killed = time.monotonic()
    seconds = _wait_prefix(hosts, prefix, incidents, killed, timeout)
    return hosts.figures("host SIGKILLed mid-burst", keys, seconds)


def _wait_prefix(hosts: Hosts, prefix: str, incidents: int, since: float, timeout: float) -> float | None:
    """Seconds from `since` until the `incidents` incidents of this scenario are final (None: not in time)."""
    deadline = since + timeout
    while time.monotonic() < deadline:
        try:
            n = hosts.rows("SELECT count(*) AS n FROM incidents WHERE status = ANY(%s)"
                           " AND error_details->>'dedup_key' LIKE %s", (list(FINAL), f"{prefix}-%"))[0]["n"]
            if n >= incidents:
                return round(time.monotonic() - since, 1)
        except psycopg.OperationalError:
            pass
        time.sleep(0.25)
    return None


def partition(hosts: Hosts, incidents: int, *, cut_for: float = 30.0, victim: int = -1, prefix: str = "cut",
              timeout: float = 120) -> Figures:
    """A burst; once a quarter of its fixes have run, cut one host's link (the last) for `cut_for` s, heal it;
    time from the cut until all are final."""
    victim_host = hosts.hosts[victim]
    keys = [f"{prefix}-{i}" for i in range(incidents)]
    before = hosts.fixes_started()
    hosts.send(keys)
    _wait(lambda: hosts.fixes_started() - before >= max(1, incidents // 4), 60, "the burst reaching the fixers")
    hosts.cut(victim_host)
    cut_at = time.monotonic()
    time.sleep(cut_for)
    hosts.heal(victim_host)
    seconds = _wait_prefix(hosts, prefix, incidents, cut_at, timeout)
    return hosts.figures(f"host cut off for {cut_for:g} s, then healed", keys, seconds)


SCENARIOS: dict[str, Callable[..., Figures]] = {"host-kill": host_kill, "partition": partition}
"""The host scenarios by name (bench/failover.py runs them beside the others)."""

FAST = {"ERDU_STAGE_DEADLINE_SECONDS": "3", "ERDU_RECONCILE_INTERVAL_SECONDS": "1"}
"""Shortened timings for a quick look (--fast); the figures that count are taken with the defaults."""


def run(name: str, *, incidents: int, cut_for: float, env: dict[str, str] | None = None) -> Figures:
    """One scenario on a topology of its own (two worker hosts), torn down afterwards."""
    with Hosts(2, env=env) as hosts:
        if name == "partition":
            return partition(hosts, incidents, cut_for=cut_for)
        return SCENARIOS[name](hosts, incidents)


RUNNERS: dict[str, Callable[[int], dict]] = {
    name: (lambda events, name=name: asdict(run(name, incidents=events, cut_for=30.0))) for name in SCENARIOS}
"""The host scenarios as bench/failover.py runs them: run(events) -> figures, each on a fresh topology."""


def summary(runs: list[Figures]) -> dict:
    """Totals of the counts and the median (and spread) of the seconds to all final."""
    seconds = [f.seconds_to_final for f in runs if f.seconds_to_final is not None]
    return {"runs": len(runs), "sent": sum(f.sent for f in runs), "lost": sum(f.lost for f in runs),
            "duplicated": sum(f.duplicated for f in runs), "stuck": sum(f.stuck for f in runs),
            "actions_twice": sum(f.actions_twice for f in runs),
            "seconds_to_final_median": statistics.median(seconds) if seconds else None,
            "seconds_to_final_min": min(seconds) if seconds else None,
            "seconds_to_final_max": max(seconds) if seconds else None,
            "never_final": sum(1 for f in runs if f.seconds_to_final is None)}


def main(argv: list[str] | None = None, *, prog: str = "python -m bench.failover_hosts") -> int:
    """Run the named host scenarios (all by default), print their figures, write --json; 1 if any lost work."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"which to run: {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each scenario, each on a fresh topology")
    parser.add_argument("--incidents", type=int, default=60, help="incidents in each burst (default 60)")
    parser.add_argument("--cut-seconds", type=float, default=30.0, help="how long the partition lasts (default 30)")
    parser.add_argument("--fast", action="store_true",
                        help="shortened stage deadline (3 s) and reconcile interval (1 s) instead of the defaults")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    if args.runs < 1 or args.incidents < 1 or args.cut_seconds <= 0:
        parser.error("--runs and --incidents must be at least 1, --cut-seconds above 0")
    why = missing_prerequisites()
    if why:
        print(f"cannot run the host scenarios: {why}", file=sys.stderr)
        return 2
    out: dict[str, dict] = {}
    for name in args.scenarios or list(SCENARIOS):
        runs = []
        for _ in range(args.runs):
            figs = run(name, incidents=args.incidents, cut_for=args.cut_seconds, env=FAST if args.fast else None)
            print(figs.show(), flush=True)
            runs.append(figs)
        out[name] = {"summary": summary(runs), "runs": [asdict(f) for f in runs]}
        print(f"{name}: {out[name]['summary']}", flush=True)
    write_json(args.json, out)
    failed = any(s["summary"]["lost"] or s["summary"]["duplicated"] or s["summary"]["actions_twice"]
                 or s["summary"]["never_final"] for s in out.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
