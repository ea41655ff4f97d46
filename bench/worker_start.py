"""Time and CPU from starting `erdu worker ROLE` to the worker being ready, as the test suite starts one.

Each start runs `python -m erdu_tasks.cli worker ROLE --loglevel INFO` (what tests/conftest.py Stack.start
runs) against a private Redis database number and a fresh, migrated Postgres database, one start after
another, and polls the worker's log for Celery's "ready." line. It prints the median seconds from the
start to that line and the median CPU seconds (user + system) the process and its children spent until
then, with their spread; each worker is stopped before the next one starts. With --baseline DIR the
starts alternate between this checkout and DIR's, so both see the same machine state.

    python bench/worker_start.py      # 7 starts of each: the five pipeline roles in one process, ingest, fixer, monitor
    python bench/worker_start.py -n 10 --role monitor --json figures.json
    python bench/worker_start.py --baseline ../erdu-main   # this checkout against another, start by start
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import PG_ADMIN_URL, stop_process_group, write_json  # noqa: E402
from bench.pipeline import tree_cpu  # noqa: E402

_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_ROLES = ["ingest,commander,diagnostician,fixer,resolver", "ingest", "fixer", "monitor"]


def one_start(role: str, env: dict[str, str], tmp: Path, n: int, timeout: float = 60) -> tuple[float, float]:
    log_path = tmp / f"{role.replace(',', '+')}-{n}.log"
    with open(log_path, "ab") as log:
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", "worker", role, "--loglevel", "INFO"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
    try:
        while True:
            if b"ready." in log_path.read_bytes():
                return time.monotonic() - started, tree_cpu(proc.pid)
            if proc.poll() is not None:
                raise RuntimeError(f"worker {role} exited: " + log_path.read_text(errors="replace")[-2000:])
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"worker {role} not ready in {timeout} s")
            time.sleep(0.01)
    finally:
        stop_process_group(proc)


def spread(values: list[float]) -> str:
    return f"min {min(values):.3f} max {max(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=7, help="starts per role (default 7)")
    parser.add_argument("--role", action="append", help="a role spec as `erdu worker` takes it (repeatable); "
                        f"default: {', '.join(DEFAULT_ROLES)}")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server (without the database)")
    parser.add_argument("--redis-db", type=int, default=13, help="the Redis database number to use (flushed)")
    parser.add_argument("--baseline", metavar="DIR", help="another checkout (say the previous commit's, from "
                        "`git worktree add`): its starts alternate with this one's, and its figures are printed "
                        "after, their keys prefixed baseline_")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    roles = args.role or DEFAULT_ROLES

    from erdu_tasks.store.migrate import migrate

    redis_url = f"{args.redis}/{args.redis_db}"
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    db_name = f"erdu_bench_start_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db_name}"
    tmp = Path(tempfile.mkdtemp(prefix="erdu-worker-start-"))
    figures: dict[str, float] = {}
    try:
        migrate(database_url)
        checkouts = {"": _ROOT}
        if args.baseline:
            checkouts["baseline_"] = Path(args.baseline).resolve()
        envs = {}
        for prefix, root in checkouts.items():
            envs[prefix] = {**os.environ, "ERDU_REDIS_URL": redis_url, "ERDU_DATABASE_URL": database_url,
                            "ERDU_REPORTS_DIR": str(tmp / "reports"), "ERDU_ALERTS_DIR": str(tmp / "alerts"),
                            "ERDU_STATE_DIR": str(tmp / "var"), "PYTHONUNBUFFERED": "1",
                            "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
            envs[prefix].pop("ERDU_CONFIG", None)
        # One start of each role first, not counted: it warms the file cache and, with bytecode writing on,
        # leaves the compiled modules in __pycache__ as a test run does (its pytest processes write them),
        # so every counted start reads them whatever PYTHONDONTWRITEBYTECODE says.
        for env in envs.values():
            for role in roles:
                one_start(role, {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}, tmp, 0)
        results = {(prefix, role): ([], []) for prefix in envs for role in roles}
        n = 0
        for role in roles:
            for _ in range(args.n):
                for prefix, env in envs.items():   # with --baseline, the two checkouts take turns
                    n += 1
                    wall, cpu = one_start(role, env, tmp, n)
                    results[prefix, role][0].append(wall)
                    results[prefix, role][1].append(cpu)
        for prefix, root in checkouts.items():
            all_wall, all_cpu = [], []
            if args.baseline:
                print(f"{prefix.rstrip('_') or 'this checkout'} ({root}):")
            for role in roles:
                walls, cpus = results[prefix, role]
                all_wall += walls
                all_cpu += cpus
                key = prefix + role.replace(",", "+")
                figures[f"{key}_ready_s"] = round(statistics.median(walls), 3)
                figures[f"{key}_cpu_s"] = round(statistics.median(cpus), 3)
                print(f"  {role}: {args.n} starts; median seconds to ready {statistics.median(walls):.3f} "
                      f"({spread(walls)}); median CPU seconds {statistics.median(cpus):.3f} ({spread(cpus)})")
            figures[f"{prefix}ready_s"] = round(statistics.median(all_wall), 3)
            figures[f"{prefix}cpu_s"] = round(statistics.median(all_cpu), 3)
            print(f"  all: median seconds to ready {figures[f'{prefix}ready_s']:.3f}; "
                  f"median CPU seconds {figures[f'{prefix}cpu_s']:.3f}")
    finally:
        r.flushdb()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
