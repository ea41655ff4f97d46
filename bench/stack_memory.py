"""Resident memory of the whole `erdu up` stack at idle: RSS summed over its process tree (and PSS).

Starts `erdu up` in a temporary directory, waits until it is ready and settled, measures, stops it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import write_json  # noqa: E402


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def measure(pid: int) -> dict[str, float]:
    rss = pss = 0
    per_part: dict[str, float] = {}
    for proc in tree(pid):
        try:
            info = proc.memory_full_info()
            cmd = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        name = " ".join(cmd[3:5]) if len(cmd) > 3 and cmd[1:3] == ["-m", "erdu_tasks.cli"] else Path(cmd[0]).name
        per_part[name] = per_part.get(name, 0) + info.rss / 2**20
    return {"rss_mb": round(rss / 2**20, 1), "pss_mb": round(pss / 2**20, 1),
            "processes": len(tree(pid)), "parts": {k: round(v, 1) for k, v in sorted(per_part.items())}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--private", action="store_true", help="start private Redis and Postgres (as on a bare machine)")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds to wait after ready")
    parser.add_argument("--json", dest="json_path", help="write the figures to this JSON file")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="erdu-mem-"))
    os.chmod(tmp, 0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("ERDU_REDIS_URL", "ERDU_DATABASE_URL", "ERDU_CONFIG")}
    if args.private:
        env["ERDU_UP_PROBE_PORTS"] = "0"
    else:
        env["ERDU_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/erdu_mem_{os.getpid()}"
    log = open(tmp / "up.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", "up"], cwd=tmp, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while "ERDU is up" not in (tmp / "up.log").read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("erdu up did not start:\n" + (tmp / "up.log").read_text()[-3000:])
            time.sleep(0.5)
        time.sleep(args.settle)
        figures = measure(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        if not args.private:
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc",
                            f"DROP DATABASE IF EXISTS erdu_mem_{os.getpid()} WITH (FORCE)"], capture_output=True)
    print(f"stack at idle: {figures['rss_mb']} MB RSS summed, {figures['pss_mb']} MB PSS, "
          f"{figures['processes']} processes")
    for part, mb in figures["parts"].items():
        print(f"  {part:>28}: {mb} MB")
    write_json(args.json_path, {"rss_mb": figures["rss_mb"], "pss_mb": figures["pss_mb"],
                                "processes": figures["processes"]})


if __name__ == "__main__":
    main()
