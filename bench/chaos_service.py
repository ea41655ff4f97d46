"""The small managed service the chaos suite breaks: an HTTP server run by supervisord.

    python chaos_service.py --name api --port 8101 --log api.log --spool spool/ --spool-limit 65536 \
        --cache redis://127.0.0.1:6390/0 [--depends http://127.0.0.1:8100/health]

- `GET /health`: liveness, 200 while the process serves (a probe watches it).
- `GET /ready`: the whole service works: its cache value parses, its connection pool has a free
  connection, its spool takes a write, and the service it depends on (if any) is alive; 200 or 503
  with the reason. The chaos bench checks healing here, independently of ERDU.
- A worker thread does the service's work every 0.3 s and logs what fails, one line per distinct error
  every 0.5 s, as `2026-01-01T00:00:00.000 LEVEL name[pid]: message` to the log file.
- `POST /fault/leak` checks out every pooled connection and never returns them (only a restart helps).
- A file named `crash-loop` beside the log makes the process exit `--crash-after` seconds after it starts.

The spool is a size-limited directory: a write that would take it over `--spool-limit` bytes fails
with ENOSPC, as on a full disk (a tmpfs needs privileges a test run may not have).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import threading
import time
import urllib.request
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import redis

CACHE_KEY = "chaos:cache:config"
POOL_SIZE = 10


class Service:
    """The service's state: its pool, cache, spool and log."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name = args.name
        self.log_path = Path(args.log)
        self.spool = Path(args.spool)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.cache = redis.Redis.from_url(args.cache, socket_timeout=1)
        self.pool = threading.BoundedSemaphore(POOL_SIZE)
        self.leaked = 0
        self.last_logged: dict[str, float] = {}
        self.lock = threading.Lock()

    def log(self, level: str, message: str) -> None:
        stamp = datetime.now().isoformat(timespec="milliseconds")
        with self.lock, open(self.log_path, "a", encoding="utf-8") as out:
            out.write(f"{stamp} {level} {self.name}[{os.getpid()}]: {message}\n")

    def log_once(self, level: str, message: str) -> None:
        now = time.monotonic()
        if now - self.last_logged.get(message, 0.0) >= 0.5:
            self.last_logged[message] = now
            self.log(level, message)

    # ---- the checks /ready and the worker share ------------------------------------------------

    def check_cache(self) -> str | None:
        raw = self.cache.get(CACHE_KEY)
        if raw is None:   # a cold cache is filled from the source of truth
            self.cache.set(CACHE_KEY, json.dumps({"version": 1, "limits": {"orders": 100}}))
            return None
        try:
            json.loads(raw)
        except ValueError:
            return f"cache value for key {CACHE_KEY} is corrupt: not JSON"
        return None

    def check_pool(self) -> str | None:
        if not self.pool.acquire(timeout=0.05):
            return f"connection pool exhausted: {POOL_SIZE} of {POOL_SIZE} connections checked out"
        self.pool.release()
        return None

    def check_spool(self) -> str | None:
        data = b"x" * 1024
        used = sum(f.stat().st_size for f in self.spool.iterdir() if f.is_file())
        try:
            if used + len(data) > self.args.spool_limit:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            path = self.spool / f"job-{os.getpid()}.dat"
            path.write_bytes(data)
            path.unlink()
        except OSError as exc:
            return f"spool write to {self.spool} failed: [Errno {exc.errno}] {exc.strerror}"
        return None

    def check_upstream(self) -> str | None:
        if not self.args.depends:
            return None
        try:
            with urllib.request.urlopen(self.args.depends, timeout=1) as answer:   # noqa: S310 - our own URL
                return None if answer.status == 200 else f"upstream {self.args.depends} answered {answer.status}"
        except OSError as exc:
            return f"upstream {self.args.depends} unavailable: {exc}"

    def problems(self) -> list[str]:
        found = []
        for check in (self.check_cache, self.check_pool, self.check_spool, self.check_upstream):
            try:
                problem = check()
            except redis.RedisError as exc:
                problem = f"cache unavailable: {exc}"
            if problem:
                found.append(problem)
        return found

    def work(self) -> None:
        """The service's own work: what fails is logged (the log monitor turns it into incidents)."""
        while True:
            for problem in self.problems():
                self.log_once("ERROR", problem)
            time.sleep(0.3)


def handler(service: Service) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:   # the access log is not the service log
            pass

        def _answer(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:   # noqa: N802 - the http.server API
            if self.path == "/health":
                self._answer(200, {"ok": True, "pid": os.getpid()})
            elif self.path == "/ready":
                problems = service.problems()
                self._answer(503 if problems else 200, {"ok": not problems, "problems": problems,
                                                        "pid": os.getpid()})
            else:
                self._answer(404, {"error": "not found"})

        def do_POST(self) -> None:   # noqa: N802
            if self.path == "/fault/leak":
                while service.pool.acquire(timeout=0.01):
                    service.leaked += 1
                self._answer(200, {"leaked": service.leaked})
            else:
                self._answer(404, {"error": "not found"})

    return Handler


def serve_forever(server: ThreadingHTTPServer) -> None:
    """The request loop (named, so a thread dump shows what the process was doing)."""
    server.serve_forever(poll_interval=0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--spool", required=True)
    parser.add_argument("--spool-limit", type=int, default=64 * 1024)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--depends", default=None)
    parser.add_argument("--crash-after", type=float, default=6.5)
    args = parser.parse_args()
    service = Service(args)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(service))
    server.daemon_threads = True
    service.log("INFO", f"started, serving on 127.0.0.1:{args.port}")
    threading.Thread(target=service.work, name="worker", daemon=True).start()
    if (Path(args.log).parent / "crash-loop").exists():
        def die() -> None:
            time.sleep(args.crash_after)
            service.log("CRITICAL", "fatal: worker state inconsistent after start, exiting")
            os._exit(3)
        threading.Thread(target=die, name="crash", daemon=True).start()
    serve_forever(server)


if __name__ == "__main__":
    main()
