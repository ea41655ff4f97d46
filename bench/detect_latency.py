"""Detection latency of the log tailer: from a line's write to its incident row in Postgres.

Runs the real thing on private services: a redis-server, a database, `erdu worker monitor`
and `erdu beat` with the default log-monitor schedule. Appends error lines to a watched
file at a steady rate, each with its own template (so each opens its own incident), and
compares each write's time with its incident's created_at. Prints p50 / p99 / max for each
path: `inotify` (the monitor worker's watcher reads a file as it is written) and `polling`
(`watch: false`: only the beat's scan every `interval`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import BenchStack, write_json  # noqa: E402
from erdu_tasks.monitors.config import load_monitors  # noqa: E402

LETTERS = "ghijklmnopqrstuvwxyz"  # no hex digits and no digits: the word stays in the template


def word(i: int) -> str:
    """A distinct all-letter word per line, so every line has its own fingerprint."""
    out = ""
    i += len(LETTERS) ** 3
    while i:
        i, r = divmod(i, len(LETTERS))
        out += LETTERS[r]
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def measure(args, watch: bool) -> dict:
    """Latencies of one stack with the watcher on (inotify) or off (polling)."""
    watched_dir = Path(tempfile.mkdtemp(prefix="erdu-latency-"))
    path = watched_dir / "app.log"
    path.write_bytes(b"")
    monitors = {"logs": {"files": [{"path": str(path), "service": "bench"}], "watch": watch}}  # default schedule
    with BenchStack({"ERDU_MONITORS": json.dumps(monitors)}) as stack:
        stack.start("monitor")
        beat_log = open(stack.tmp / "beat.log", "ab")
        stack.workers["beat"] = subprocess.Popen(
            [sys.executable, "-m", "erdu_tasks.cli", "beat", "--loglevel", "WARNING"], env=stack.env,
            cwd=stack.tmp, stdout=beat_log, stderr=subprocess.STDOUT, start_new_session=True)
        wait(lambda: stack.query("SELECT 1 FROM tail_watches"), 60, "the first scan of the watched file")
        time.sleep(1.0)   # the watcher starts with the first scan

        written: dict[str, float] = {}
        period = 1.0 / args.rate
        started = time.monotonic()
        with open(path, "ab", buffering=0) as fh:
            for i in range(args.lines):
                due = started + i * period
                time.sleep(max(0.0, due - time.monotonic()))
                w = word(i)
                noise = "".join(f"2024-05-01T10:00:00 INFO request {i}.{k} served in 4 ms\n" for k in range(args.noise))
                fh.write(f"{noise}2024-05-01T10:00:00 ERROR bench failure {w} in worker {i}\n".encode())
                written[w] = time.time()
        wait(lambda: stack.query("SELECT count(*) AS n FROM incidents")[0]["n"] >= args.lines, 60,
             f"{args.lines} incidents")
        rows = stack.query("SELECT description, created_at FROM incidents")
    shutil.rmtree(watched_dir, ignore_errors=True)
    latencies = []
    for row in rows:
        w = row["description"].split("bench failure ", 1)[1].split(" ", 1)[0]
        latencies.append((row["created_at"].timestamp() - written[w]) * 1000)
    return {"p50_ms": round(percentile(latencies, 50), 1), "p99_ms": round(percentile(latencies, 99), 1),
            "max_ms": round(max(latencies), 1), "lines": len(latencies), "rate_per_s": args.rate,
            "interval_s": load_monitors(monitors).logs.interval}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=200, help="error lines to write (default 200)")
    parser.add_argument("--rate", type=float, default=10.0, help="lines per second (default 10)")
    parser.add_argument("--noise", type=int, default=5, help="INFO lines written with each error line")
    parser.add_argument("--paths", default="inotify,polling", help="which paths to measure (default both)")
    parser.add_argument("--json", dest="json_path", help="write the figures to this JSON file")
    args = parser.parse_args()
    chosen = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not chosen or set(chosen) - {"inotify", "polling"}:
        parser.error("--paths takes inotify, polling or both joined by a comma")
    figures = {}
    for name in chosen:
        figures[name] = f = measure(args, watch=name == "inotify")
        print(f"{name:8} write -> incident row over {f['lines']} lines at {args.rate:g}/s: "
              f"p50 {f['p50_ms']} ms, p99 {f['p99_ms']} ms, max {f['max_ms']} ms", flush=True)
    write_json(args.json_path, figures)


if __name__ == "__main__":
    main()
