"""CPU per stage per incident, in-process, without a broker: where the pipeline's own CPU goes.

N events (each its own incident, like bench/pipeline.py's: a noop runbook matches) go through ingest
(parse and store) and the four stage bodies (assess, diagnose, fix, resolve) through drive_stage, as a
worker runs them, against a private migrated database; the hand-off is left out (no broker). Prints the
CPU milliseconds (time.process_time of this process: Postgres's own CPU is not counted) and wall
milliseconds per stage per incident, means over the N incidents after a warm-up. `--profile` runs cProfile,
timed by CPU, over the timed incidents and prints the functions with the most cumulative and own CPU per stage.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench._harness import PG_ADMIN_URL, write_json  # noqa: E402
from bench.pipeline import RUNBOOK  # noqa: E402   # the same noop runbook the pipeline bench uses

STAGES = ("ingest", "assess", "diagnose", "fix", "resolve")


class _Task:
    """What drive_stage needs of a Celery task: a name and a way to run a step (no retries here)."""

    name = "erdu.bench"

    @staticmethod
    def with_retries(fn):
        return fn()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=300, help="timed incidents (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed incidents first (default 30)")
    parser.add_argument("--profile", action="store_true", help="cProfile each stage; print its top functions")
    parser.add_argument("--top", type=int, default=25, help="functions shown per stage with --profile")
    parser.add_argument("--keep-reports", action="store_true", help="keep the reports written (prints where)")
    parser.add_argument("--json", dest="json_path", help="write the figures (keys as printed) to this JSON file")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="erdu-stage-cpu-"))
    (tmp / "runbooks").mkdir()
    (tmp / "runbooks" / "bench.yaml").write_text(RUNBOOK)
    db_name = f"erdu_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    database_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db_name}"
    # The worker's environment, before the app (and its settings) are imported.
    os.environ.update({"ERDU_DATABASE_URL": database_url, "ERDU_RUNBOOKS_DIR": str(tmp / "runbooks"),
                       "ERDU_REPORTS_DIR": str(tmp / "reports"), "ERDU_ALERTS_DIR": str(tmp / "alerts"),
                       "ERDU_STATE_DIR": str(tmp / "var")})
    os.environ.pop("ERDU_CONFIG", None)
    try:
        figures = run(args, database_url)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        if args.keep_reports:
            print(f"reports kept in {tmp / 'reports'}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    write_json(args.json_path, figures)


def run(args: argparse.Namespace, database_url: str) -> dict:
    from erdu_tasks.store.migrate import migrate

    migrate(database_url)
    from erdu_tasks.app import runtime
    from erdu_tasks.celery_ext.logs import configure
    from erdu_tasks.ingest.formats.event import parse_events
    from erdu_tasks.names import Stage
    from erdu_tasks.tasks import base, fix, pipeline
    from erdu_tasks.tasks.base import drive_stage
    from erdu_tasks.tasks.ingest import store_events

    configure("WARNING", "json", stream=io.StringIO())   # as a worker started with --loglevel WARNING
    logging.getLogger().setLevel(logging.WARNING)
    base.hand_on = lambda *_: None   # no broker: the stages are driven here, in order
    rt = runtime()
    bodies = {"assess": (Stage.ASSESS, pipeline._assess), "diagnose": (Stage.DIAGNOSE, pipeline._diagnose),
              "fix": (Stage.FIX, fix.FIX_BODY), "resolve": (Stage.RESOLVE, pipeline._resolve)}
    profiles = {s: cProfile.Profile(time.process_time) for s in STAGES} if args.profile else {}
    cpu = {s: 0.0 for s in STAGES}
    wall = {s: 0.0 for s in STAGES}

    def timed(stage: str, fn, count: bool):
        prof = profiles.get(stage) if count else None
        c0, w0 = time.process_time(), time.perf_counter()
        if prof:
            prof.enable()
        try:
            return fn()
        finally:
            if prof:
                prof.disable()
            if count:
                cpu[stage] += time.process_time() - c0
                wall[stage] += time.perf_counter() - w0

    def one(i: int, count: bool) -> None:
        key = f"{'load' if count else 'warm'}-{i}"
        event = {"message": f"Bench failure {key}", "source": "bench", "service": "bench", "dedup_key": key}
        result = timed("ingest", lambda: store_events(rt, parse_events(event), f"message-{key}"), count)
        incident_id = result.new_incidents[0]
        stage: Stage | None = Stage.ASSESS
        seen = []
        while stage is not None:
            name = next(n for n, (s, _) in bodies.items() if s == stage)
            seen.append(name)
            stage = timed(name, lambda: drive_stage(_Task(), rt, stage, incident_id, bodies[name][1], "bench/1"),
                          count)
        if seen != ["assess", "diagnose", "fix", "resolve"]:
            raise RuntimeError(f"incident {incident_id} went {' -> '.join(seen)}, not through the four stages")

    for i in range(args.warmup):
        one(i, False)
    for i in range(args.n):
        one(i, True)

    per = {s: {"cpu_ms": round(1000 * cpu[s] / args.n, 2), "wall_ms": round(1000 * wall[s] / args.n, 2)}
           for s in STAGES}
    total_cpu = round(sum(v["cpu_ms"] for v in per.values()), 2)
    total_wall = round(sum(v["wall_ms"] for v in per.values()), 2)
    print(f"ms per incident over {args.n} incidents (after {args.warmup} untimed)"
          + (" under cProfile (inflated)" if args.profile else ""))
    print(f"{'stage':12}{'cpu_ms':>10}{'wall_ms':>10}")
    for s in STAGES:
        print(f"{s:12}{per[s]['cpu_ms']:10.2f}{per[s]['wall_ms']:10.2f}")
    print(f"{'total':12}{total_cpu:10.2f}{total_wall:10.2f}")
    for s, prof in profiles.items():
        for order in ("cumulative", "tottime"):
            out = io.StringIO()
            pstats.Stats(prof, stream=out).strip_dirs().sort_stats(order).print_stats(args.top)
            text = out.getvalue()
            print(f"\n==== {s}: by {order} ====")
            print(text[text.find("   ncalls"):].rstrip())
    return {"n": args.n, "warmup": args.warmup, "profiled": args.profile, "stages": per,
            "total": {"cpu_ms": total_cpu, "wall_ms": total_wall}}


if __name__ == "__main__":
    main()
