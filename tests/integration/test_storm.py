"""A storm of 100,000 lines of 20 templates becomes 20 incidents and 20 chains, not more."""

from __future__ import annotations

import random

from erdu_tasks.ingest.storm import batches_from_lines
from tests.conftest import incident_rows, wait_for

TEMPLATES = [
    "Timeout after {n}ms for request {m}",
    "Connection refused to 10.0.{n}.{m}:5432",
    "Worker {n} crashed with exit code {m}",
    "Queue overflowing: {n} messages pending on shard {m}",
    "Payment processor error code {n} for order {m}",
    "Cache miss storm: {n} misses in {m} seconds",
    "Disk usage at {n}% on volume {m}",
    "Failed to parse record {n} at offset {m}",
    "User {n} session expired after {m} seconds",
    "Retrying upload {n} attempt {m}",
    "Lock wait timeout on table orders row {n} after {m}ms",
    "Rate limit exceeded for client {n}: {m} requests",
    "SSL handshake failed with peer 192.168.{n}.{m}",
    "Invoice {n} total mismatch by {m} cents",
    "Job {n} exceeded memory limit of {m}MB",
    "Replica lag {n}s on replica {m}",
    "Webhook delivery {n} failed with status {m}",
    "Thumbnail generation failed for image {n} size {m}",
    "Search index shard {n} unavailable for {m}ms",
    "Email bounce for message {n} code {m}",
]


def storm_lines(total: int, seed: int = 7):
    rnd = random.Random(seed)
    for i in range(total):
        template = TEMPLATES[i % len(TEMPLATES)]
        yield "ERROR " + template.format(n=rnd.randint(1, 99999), m=rnd.randint(1, 99999))


def test_a_storm_of_100000_lines_becomes_20_incidents_and_20_chains(stack_factory):
    stack = stack_factory()
    stack.start_all(("ingest", "commander"))
    messages = 0
    for batch in batches_from_lines(storm_lines(100_000), service="shop"):
        stack.send_event(batch)
        messages += 1
    assert messages == 20  # one ingest message per 5,000 lines, each folded to ≤ 20 events
    wait_for(lambda: sum(r["occurrences"] for r in incident_rows(stack.database_url)) == 100_000, 120,
             what="100,000 occurrences committed")
    rows = incident_rows(stack.database_url)
    assert len(rows) == 20
    assert sorted(r["occurrences"] for r in rows) == [5_000] * 20
    chains = wait_for(lambda: incident_rows(
        stack.database_url, "SELECT count(*) AS n FROM incident_timeline WHERE actor = 'commander'")[0]["n"] == 20,
        60, what="20 assessments")
    assert chains
    assessed = incident_rows(stack.database_url,
                             "SELECT count(*) AS n FROM incident_timeline WHERE actor = 'commander'")[0]["n"]
    assert assessed == 20
