"""History size against per-incident and per-scrape cost: the queries a stage, a scrape and `erdu stats` run.

Usage: python bench/history.py [--sizes 0,100000] [--open 500] [--repeat 20] [--json PATH]

One private database (migrated), grown to each size in turn with closed incidents loaded by
INSERT ... SELECT generate_series (bench/history_data.py: two years of 2,000 patterns, each closed
incident with its five status changes and a runbook run) plus `--open` open incidents, then VACUUM ANALYZE.
At each size it prints, in milliseconds, the median and the 95th percentile over `--repeat` runs of:

- related_incidents: the diagnostician's search (history.related_incidents), for recent incidents;
- inhibition: the open-parent candidates the commander reads for one incident, with a catalog in which
  each service depends on two others;
- count_open: the commander's count of open incidents;
- metrics_scrape: read_postgres + the exposition text of every incident family (no Redis);
- stats: what `erdu stats` calls (overall, by severity, top 20 fingerprints);
- upsert_new_incident: ingest's insert of one new incident (every index and trigger), rolled back;
- list_first_page and list_deep_page: 50 incidents newest first, at the start and 50,000 rows in
  (by cursor; by OFFSET when the code under test has no cursor).

Then, with the real workers (one per role, on a private Redis, a noop runbook as in bench/pipeline.py)
running on that database, unless --no-pipeline:

- serial: `--serial` events sent one at a time, each waited for: send -> closed p50 and p95;
- burst: `--burst` events sent at once: send -> closed p50 and p95, incidents closed per second, and the
  CPU per incident of the workers and of the database's Postgres backends while they ran;
- stage_<role>: per role, p50 of the time from the previous role's last timeline row to its own last
  one (queue wait included), over the burst's incidents;
- cli_stats, cli_incidents_ls: `erdu stats` and `erdu incidents ls` as commands (Python start included);
- api_filtered, api_deep_page: GET /v1/incidents?status=closed&severity=P3&service=orders-1 and the
  page 50,000 rows in (by its cursor), through the API app in this process.

--sizes 0,100000,1000000 adds the million (about 10 minutes to load on two cores). --json PATH writes
{size: {figure_p50_ms: ..., figure_p95_ms: ...}} and {size: {pipeline figure: ...}}, the numbers as
printed; cost_ratio is the burst's CPU per incident at each size over that at the first size.
"""

from __future__ import annotations

import argparse
import inspect
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402
from prometheus_client import generate_latest  # noqa: E402
from prometheus_client.registry import CollectorRegistry  # noqa: E402
from psycopg.rows import dict_row  # noqa: E402

from bench import history_data  # noqa: E402
from bench._harness import PG_ADMIN_URL, BenchStack, write_json  # noqa: E402
from erdu_tasks.catalog import Catalog, Service  # noqa: E402
from erdu_tasks.escalation import inhibition  # noqa: E402
from erdu_tasks.model import Incident  # noqa: E402
from erdu_tasks.store import history, incidents as store, metrics, stats  # noqa: E402
from erdu_tasks.store.migrate import migrate  # noqa: E402

FIGURES = ("related_incidents", "inhibition", "count_open", "metrics_scrape", "stats", "upsert_new_incident",
           "list_first_page", "list_deep_page")
DEEP = 50_000


def timings(fn: Callable[[int], Any], repeat: int) -> tuple[float, float]:
    """(p50, p95) in ms of fn(i) for i in range(repeat), after one warm-up call."""
    fn(0)
    ms = []
    for i in range(repeat):
        started = time.perf_counter()
        fn(i)
        ms.append((time.perf_counter() - started) * 1000)
    ms.sort()
    return statistics.median(ms), ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]


def catalog() -> Catalog:
    """Each bench service depends on the next two of the list (so a child has two possible parents' services)."""
    names = list(history_data.SERVICES)
    return Catalog([Service(name=n, depends_on=[names[(i + 1) % len(names)], names[(i + 2) % len(names)]])
                    for i, n in enumerate(names)])


class _Scrape:
    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn

    def collect(self):
        snap = metrics.Snapshot(postgres_up=True)
        metrics.read_postgres(self.conn, snap)
        yield from metrics.families(snap)


def measure(conn: psycopg.Connection, repeat: int) -> dict[str, tuple[float, float]]:
    """Every figure at the database's current size."""
    ids = [r["id"] for r in conn.execute(
        "(SELECT id FROM incidents WHERE status = 'closed' ORDER BY created_at DESC LIMIT %(n)s)"
        " UNION ALL (SELECT id FROM incidents WHERE status <> 'closed' ORDER BY created_at DESC LIMIT %(n)s)",
        {"n": repeat}).fetchall()]
    subjects: list[Incident] = [store.get_incident(conn, i) for i in ids] or []
    out: dict[str, tuple[float, float]] = {}
    if subjects:
        out["related_incidents"] = timings(lambda i: history.related_incidents(conn, subjects[i % len(subjects)]),
                                           repeat)
        cat = catalog()
        gates_child = "child" in inspect.signature(inhibition.candidates).parameters
        if gates_child:
            out["inhibition"] = timings(lambda i: inhibition.candidates(
                conn, inhibition.DEFAULT_RULES, child=subjects[i % len(subjects)],
                dependencies_of=cat.dependencies), repeat)
        else:
            out["inhibition"] = timings(lambda i: inhibition.candidates(conn, inhibition.DEFAULT_RULES), repeat)
    out["count_open"] = timings(lambda i: store.count_open(conn), repeat)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(conn))
    out["metrics_scrape"] = timings(lambda i: generate_latest(registry), max(3, repeat // 4))
    out["stats"] = timings(lambda i: (stats.overall(conn), stats.by_severity(conn), stats.by_fingerprint(conn)),
                           max(3, repeat // 4))
    samples = [store.NewIncident(fingerprint=f"bench-new-{secrets.token_hex(8)}", template=s.template, title=s.title,
                                 description=s.title, severity=s.severity, source="bench", service=s.service,
                                 host=None, affected_services=list(s.affected_services), tags=[], labels={},
                                 error_details={}, samples=[], count=1) for s in subjects[:1]] * repeat
    if samples:
        def upsert(i: int) -> None:
            with conn.transaction(force_rollback=True):
                store.upsert_incident(conn, samples[i % len(samples)])
        out["upsert_new_incident"] = timings(upsert, repeat)
    out["list_first_page"] = timings(lambda i: store.list_incidents(conn, limit=50), repeat)
    deep = conn.execute("SELECT id, created_at FROM incidents ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1",
                        (DEEP - 1,)).fetchone()
    if deep is not None:
        if hasattr(store, "encode_cursor"):
            cursor = store.encode_cursor(Incident(id=deep["id"], fingerprint="", title="", description="",
                                                  severity="P3", status="closed", source="",  # type: ignore[arg-type]
                                                  created_at=deep["created_at"]))
            out["list_deep_page"] = timings(lambda i: store.list_incidents(conn, limit=50, after=cursor), repeat)
        else:
            out["list_deep_page"] = timings(lambda i: store.list_incidents(conn, limit=50, offset=DEEP), repeat)
    return out


PIPELINE_ROLES = ("ingest", "commander", "diagnostician", "fixer", "resolver")


def _pipeline_stack(url: str) -> BenchStack:
    from bench.pipeline import RUNBOOK

    runbooks = Path(tempfile.mkdtemp(prefix="erdu-bench-runbooks-"))
    (runbooks / "bench.yaml").write_text(RUNBOOK)
    stack = BenchStack({"ERDU_RUNBOOKS_DIR": str(runbooks)}, database_url=url).__enter__()
    for role in PIPELINE_ROLES:
        stack.start(role)
    return stack


def _stage_p50(conn: psycopg.Connection, keys: list[str], since: datetime) -> dict[str, float]:
    """Per role, p50 ms from the previous role's last timeline row to its own last one."""
    rows = conn.execute(
        "SELECT t.incident_id, t.actor, extract(epoch FROM t.at)::float8 AS at, extract(epoch FROM i.created_at)::float8"
        " AS created FROM incident_timeline t JOIN incidents i ON i.id = t.incident_id"
        " WHERE i.created_at >= %s AND i.error_details->>'dedup_key' = ANY(%s) ORDER BY t.incident_id, t.at, t.id",
        (since, keys)).fetchall()
    per: dict[str, list[float]] = {}
    by_incident: dict[str, list[dict]] = {}
    for r in rows:
        by_incident.setdefault(r["incident_id"], []).append(r)
    for timeline in by_incident.values():
        previous_end = timeline[0]["created"]
        for role in PIPELINE_ROLES[1:]:
            mine = [r["at"] for r in timeline if r["actor"] == role]
            if mine:
                per.setdefault(role, []).append((max(mine) - previous_end) * 1000)
                previous_end = max(mine)
    return {role: statistics.median(v) for role, v in per.items()}


def _command_ms(stack: BenchStack, *args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "erdu_tasks.cli", *args], env=stack.env, cwd=stack.tmp,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    if done.returncode:
        raise RuntimeError(f"erdu {' '.join(args)} failed: {done.stderr.decode(errors='replace')[-500:]}")
    return (time.perf_counter() - started) * 1000


def measure_pipeline(stack: BenchStack, size: int, serial: int, burst: int, repeat: int) -> dict[str, float]:
    """The pipeline's figures at the database's current size (the stack's workers on it)."""
    from celery import Celery
    from fastapi.testclient import TestClient

    from bench.pipeline import backend_cpu, closed_times, erdu_event, percentile, tree_cpu, wait_closed
    from erdu_tasks.api.app import create_app
    from erdu_tasks.settings import load_settings

    producer = Celery("bench-producer", broker=stack.redis_url)
    producer.conf.update(task_serializer="json", accept_content=["json"])
    out: dict[str, float] = {}
    with psycopg.connect(stack.database_url, autocommit=True, row_factory=dict_row) as conn:
        def send(key: str) -> float:
            at = time.time()
            producer.send_task("erdu.ingest", args=(erdu_event(key),), queue="ingest")
            return at

        tag = f"h{size}-"
        # Polls read only what this run created, and the polling connection's own CPU is not the pipeline's.
        since, poller = datetime.now(timezone.utc) - timedelta(minutes=1), (conn.info.backend_pid,)
        for i in range(5):
            send(f"{tag}warm-{i}")
        wait_closed(conn, f"{tag}warm-", 5, 120, since)
        latency = []
        for i in range(serial):
            key = f"{tag}serial-{i}"
            at = send(key)
            wait_closed(conn, key, 1, 60, since)
            latency.append((closed_times(conn, [key], since)[key] - at) * 1000)
        out["serial_p50_ms"], out["serial_p95_ms"] = percentile(latency, 0.5), percentile(latency, 0.95)
        cpu0 = sum(tree_cpu(stack.workers[r].pid) for r in PIPELINE_ROLES) + backend_cpu(stack.db_name, poller)
        keys = [f"{tag}burst-{i}" for i in range(burst)]
        sent = {k: send(k) for k in keys}
        wait_closed(conn, f"{tag}burst-", burst, max(300, burst), since)
        cpu = sum(tree_cpu(stack.workers[r].pid) for r in PIPELINE_ROLES) + backend_cpu(stack.db_name, poller) - cpu0
        closed = closed_times(conn, keys, since)
        lat = [(closed[k] - sent[k]) * 1000 for k in keys]
        out["burst_p50_ms"], out["burst_p95_ms"] = percentile(lat, 0.5), percentile(lat, 0.95)
        out["burst_per_s"] = burst / (max(closed.values()) - min(sent.values()))
        out["cpu_ms_per_incident"] = 1000 * cpu / burst
        for role, ms in _stage_p50(conn, keys, since).items():
            out[f"stage_{role}_p50_ms"] = ms
    runs = max(3, repeat // 5)
    out["cli_stats_ms"] = statistics.median(_command_ms(stack, "stats") for _ in range(runs))
    out["cli_incidents_ls_ms"] = statistics.median(_command_ms(stack, "incidents", "ls") for _ in range(runs))
    settings = load_settings(database_url=stack.database_url, redis_url=stack.redis_url)
    with TestClient(create_app(settings)) as api:
        def get(params: dict) -> dict:
            r = api.get("/v1/incidents", params=params)
            if r.status_code != 200:
                raise RuntimeError(f"GET /v1/incidents {params}: {r.status_code} {r.text[:300]}")
            return r.json()

        filtered = {"status": "closed", "severity": "P3", "service": "orders-1", "limit": 50}
        out["api_filtered_ms"] = timings(lambda i: get(filtered), repeat)[0]
        with psycopg.connect(stack.database_url, row_factory=dict_row) as conn:
            deep = conn.execute("SELECT id, created_at FROM incidents ORDER BY created_at DESC, id DESC OFFSET %s"
                                " LIMIT 1", (DEEP - 1,)).fetchone()
        if deep is not None:
            cursor = store.encode_cursor(Incident(id=deep["id"], fingerprint="", title="", description="",
                                                  severity="P3", status="closed", source="",  # type: ignore[arg-type]
                                                  created_at=deep["created_at"]))
            out["api_deep_page_ms"] = timings(lambda i: get({"cursor": cursor, "limit": 50}), repeat)[0]
    return {k: round(v, 2) for k, v in out.items()}


PIPELINE_FIGURES = ("serial_p50_ms", "serial_p95_ms", "burst_p50_ms", "burst_p95_ms", "burst_per_s",
                    "cpu_ms_per_incident", *(f"stage_{r}_p50_ms" for r in PIPELINE_ROLES[1:]), "cli_stats_ms",
                    "cli_incidents_ls_ms", "api_filtered_ms", "api_deep_page_ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0,100000", help="closed incidents, ascending (default 0,100000)")
    parser.add_argument("--open", type=int, default=500, help="open incidents (default 500)")
    parser.add_argument("--repeat", type=int, default=20, help="runs per figure (default 20)")
    parser.add_argument("--json", dest="json_path", help="write the figures to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the database (its URL is printed)")
    parser.add_argument("--no-pipeline", action="store_true", help="only the queries, no workers")
    parser.add_argument("--serial", type=int, default=20, help="serial events per size (default 20)")
    parser.add_argument("--burst", type=int, default=200, help="burst events per size (default 200)")
    parser.add_argument("--bulk-indexes", action="store_true",
                        help="drop and re-create the indexes around each load (faster; GiST trees built in bulk"
                             " are tighter than those grown row by row, so the trigram figures come out better)")
    args = parser.parse_args()
    sizes = sorted(int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))    # still drop the database

    name = f"erdu_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    figures: dict[str, dict[str, float]] = {}
    pipeline: dict[str, dict[str, float]] = {}
    stack: BenchStack | None = None
    try:
        migrate(url)
        loaded = 0
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            for size in sizes:
                started = time.perf_counter()
                with conn.transaction():
                    history_data.load(conn, closed=size - loaded, open_=args.open if size == sizes[0] else 0,
                                      start=loaded, rebuild_indexes=args.bulk_indexes)
                # Vacuumed before measuring: right after a bulk load autovacuum would otherwise vacuum the
                # new rows while the pipeline runs, and its CPU would count as the pipeline's.
                conn.execute("VACUUM (ANALYZE) incidents, incident_timeline, runbook_runs")
                load_s = time.perf_counter() - started
                loaded = size
                rows = conn.execute("SELECT count(*) AS n FROM incidents").fetchone()["n"]
                print(f"\n{size:,} closed incidents ({rows:,} rows, loaded in {load_s:.1f} s)")
                print(f"{'figure':>20}  {'p50 ms':>9}  {'p95 ms':>9}")
                result = measure(conn, args.repeat)
                entry: dict[str, float] = {}
                for figure in FIGURES:
                    if figure in result:
                        p50, p95 = result[figure]
                        print(f"{figure:>20}  {p50:9.2f}  {p95:9.2f}")
                        entry[f"{figure}_p50_ms"] = round(p50, 3)
                        entry[f"{figure}_p95_ms"] = round(p95, 3)
                    else:
                        print(f"{figure:>20}  {'-':>9}  {'-':>9}")
                figures[str(size)] = entry
                if not args.no_pipeline:
                    stack = stack or _pipeline_stack(url)
                    got = measure_pipeline(stack, size, args.serial, args.burst, args.repeat)
                    first = pipeline[str(sizes[0])]["cpu_ms_per_incident"] if pipeline else got["cpu_ms_per_incident"]
                    got["cost_ratio"] = round(got["cpu_ms_per_incident"] / first, 2)
                    pipeline[str(size)] = got
                    print(f"{'pipeline (workers)':>28}  {'value':>9}")
                    for figure in (*PIPELINE_FIGURES, "cost_ratio"):
                        if figure in got:
                            print(f"{figure:>28}  {got[figure]:9.2f}")
    finally:
        if stack is not None:
            stack.__exit__(None, None, None)
        if args.keep:
            print(f"\nkept {url}")
        else:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    write_json(args.json_path, {**figures, "pipeline": pipeline} if pipeline else figures)


if __name__ == "__main__":
    main()
