"""Time from `erdu up` on a fresh state to a usable console: signed in, the incident list rendered.

Each run starts `erdu up` in a new temporary directory with private Redis and Postgres (as on a bare
machine: nothing configured, nothing reused; with --machine-postgres, a new database on the machine's
Postgres at 127.0.0.1:5432 and a new redis-server instead, so no initdb), then polls until a person can sign in to the console and
the incident list renders; it also notes when `erdu up` says every process is ready. `make up` runs the
same command once the virtualenv is installed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import free_port, write_json  # noqa: E402


def usable(base: str) -> bool:
    """True once the sign-in form works and the incident list renders for the signed-in person."""
    try:
        with httpx.Client(base_url=base, timeout=2) as client:
            form = client.get("/login")
            if form.status_code != 200:
                return False
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
            client.post("/login", data={"name": "bench", "csrf": csrf, "next": "/incidents"})
            page = client.get("/incidents")
            return page.status_code == 200 and 'id="incident-rows"' in page.text and "bench" in page.text
    except (httpx.HTTPError, AttributeError):
        return False


def one_run(machine_postgres: bool) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="erdu-console-ready-"))
    os.chmod(tmp, 0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERDU_")}
    api_port, flower_port = free_port(), free_port()
    env.update(ERDU_UP_PROBE_PORTS="0", ERDU_API__PORT=str(api_port), ERDU_FLOWER__PORT=str(flower_port))
    redis = None
    database = f"erdu_console_ready_{os.getpid()}_{api_port}"
    if machine_postgres:
        redis_port = free_port()
        redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port",
                                  str(redis_port), "--save", "", "--appendonly", "no", "--dir", str(tmp)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env.update(ERDU_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
                   ERDU_DATABASE_URL=f"postgresql://postgres@127.0.0.1:5432/{database}")
    log = open(tmp / "up.log", "w")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", "up"], cwd=tmp, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{api_port}"
    console_at = all_up_at = None
    try:
        deadline = started + 240
        while console_at is None or all_up_at is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("erdu up did not come up:\n" + (tmp / "up.log").read_text()[-3000:])
            if console_at is None and usable(base):
                console_at = time.monotonic() - started
            if all_up_at is None and "ERDU is up" in (tmp / "up.log").read_text():
                all_up_at = time.monotonic() - started
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        if redis is not None:
            redis.terminate()
            redis.wait(10)
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc",
                            f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"console_usable_s": round(console_at, 2), "all_ready_s": round(all_up_at, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="how many fresh starts (default 3)")
    parser.add_argument("--machine-postgres", action="store_true",
                        help="a new database on the machine's Postgres (and a new redis-server) instead of private ones")
    parser.add_argument("--json", dest="json_path", help="write the figures to this JSON file")
    args = parser.parse_args()
    runs = [one_run(args.machine_postgres) for _ in range(args.runs)]
    figures: dict[str, object] = {"runs": runs}
    for key in ("console_usable_s", "all_ready_s"):
        values = [r[key] for r in runs]
        figures[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
        print(f"{key}: median {statistics.median(values):.1f} s (min {min(values):.1f}, max {max(values):.1f}) "
              f"over {len(values)} fresh start(s)")
    write_json(args.json_path, figures)


if __name__ == "__main__":
    main()
