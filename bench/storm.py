"""Storm throughput: log text → folded ingest messages → committed incident counts in Postgres.

Prints lines/second end to end and peak memory of the producer and of the ingest worker.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._harness import BenchStack, write_json  # noqa: E402

TEMPLATES = [
    "Timeout after {n}ms for request {m}", "Connection refused to 10.0.{n}.{m}:5432",
    "Worker {n} crashed with exit code {m}", "Queue overflowing: {n} messages pending on shard {m}",
    "Payment processor error code {n} for order {m}", "Disk usage at {n}% on volume {m}",
    "Failed to parse record {n} at offset {m}", "Lock wait timeout on row {n} after {m}ms",
    "Rate limit exceeded for client {n}: {m} requests", "Job {n} exceeded memory limit of {m}MB",
    "Replica lag {n}s on replica {m}", "Webhook delivery {n} failed with status {m}",
    "Search index shard {n} unavailable for {m}ms", "Email bounce for message {n} code {m}",
    "SSL handshake failed with peer 192.168.{n}.{m}", "Invoice {n} total mismatch by {m} cents",
    "User {n} session expired after {m} seconds", "Retrying upload {n} attempt {m}",
    "Cache miss storm: {n} misses in {m} seconds", "Thumbnail generation failed for image {n} size {m}",
]


def lines(total: int):
    rnd = random.Random(1)
    for i in range(total):
        yield "ERROR " + TEMPLATES[i % len(TEMPLATES)].format(n=rnd.randint(1, 99999), m=rnd.randint(1, 99999))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lines", type=int, default=200_000, help="how many log lines (default 200,000)")
    parser.add_argument("--batch", type=int, default=5_000, help="lines folded per ingest message")
    parser.add_argument("--json", dest="json_path", help="write the figures to this JSON file")
    args = parser.parse_args()

    from celery import Celery

    from erdu_tasks.ingest.storm import batches_from_lines

    with BenchStack() as stack:
        stack.start("ingest")
        client = Celery(broker=stack.redis_url)
        client.conf.update(task_serializer="json")
        peak_worker = [0.0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak_worker[0] = max(peak_worker[0], stack.rss_mb("ingest"))
                time.sleep(0.2)

        threading.Thread(target=sample, daemon=True).start()
        started = time.perf_counter()
        messages = 0
        for batch in batches_from_lines(lines(args.lines), service="bench", batch_lines=args.batch):
            client.send_task("erdu.ingest", args=(batch,), queue="ingest")
            messages += 1
        produced = time.perf_counter()
        while True:
            total = stack.query("SELECT coalesce(sum(occurrences), 0) AS n FROM incidents")[0]["n"]
            if total >= args.lines:
                break
            time.sleep(0.05)
        finished = time.perf_counter()
        done.set()
        incidents = stack.query("SELECT count(*) AS n FROM incidents")[0]["n"]
    figures = {
        "lines": args.lines,
        "ingest_messages": messages,
        "incidents": incidents,
        "lines_per_s": round(args.lines / (finished - started)),
        "producer_lines_per_s": round(args.lines / (produced - started)),
        "seconds": round(finished - started, 3),
        "producer_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "ingest_worker_peak_rss_mb": round(peak_worker[0], 1),
    }
    for key, value in figures.items():
        print(f"{key:>26}: {value}")
    write_json(args.json_path, figures)


if __name__ == "__main__":
    main()
