"""`erdu metrics`: counters computed from Postgres and Redis move when an incident is processed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port, incident_rows, wait_for

RUNBOOK = textwrap.dedent("""
    runbooks:
      - name: flush-search-cache
        match: {service: search}
        actions:
          - action: noop
        validation: {check: noop}
        limits: {max_runs: 100, per_seconds: 3600}
""")


@pytest.fixture()
def stack(stack_factory, tmp_path):
    runbooks = tmp_path / "runbooks"
    runbooks.mkdir()
    (runbooks / "search.yaml").write_text(RUNBOOK)
    s = stack_factory({"ERDU_RUNBOOKS_DIR": str(runbooks)})
    s.start_all()
    return s


def serve_metrics(env: dict[str, str], cwd):
    """Start `erdu metrics` on a free port; returns (process, url) once it answers."""
    port = free_port()
    log_path = cwd / f"metrics-{port}.log"
    proc = subprocess.Popen([sys.executable, "-m", "erdu_tasks.cli", "metrics", "--port", str(port)], env=env,
                            cwd=cwd, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/metrics"

    def up() -> bool:
        assert proc.poll() is None, log_path.read_text()
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 30, 0.2, what="metrics endpoint")
    return proc, url


def stop(proc) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)


@pytest.fixture()
def metrics_url(stack):
    proc, url = serve_metrics(stack.env, stack.tmp)
    yield url
    stop(proc)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    text = httpx.get(url, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_processed_incident_moves_the_counters_histograms_and_ratio(stack, metrics_url):
    before = scrape(metrics_url)
    assert value(before, "erdu_backend_up", backend="postgres") == 1
    assert value(before, "erdu_backend_up", backend="redis") == 1
    for queue in ("ingest", "monitor", "commander", "diagnostician", "fixer", "resolver"):
        assert ("erdu_queue_depth", (("queue", queue),)) in before, queue
        assert ("erdu_queue_unacked", (("queue", queue),)) in before, queue
    assert value(before, "erdu_incidents_opened_total", severity="P3", source="metrics-test") == 0

    stack.send_event({"message": "Search index error: shard 3 unavailable", "service": "search",
                      "source": "metrics-test", "severity": "P3"})
    incident = wait_for(lambda: incident_rows(stack.database_url), 30, what="an incident")[0]
    wait_for(lambda: incident_rows(stack.database_url, "SELECT status FROM incidents WHERE id = %s",
                                   (incident["id"],))[0]["status"] == "closed", 60, what="closed")
    row = incident_rows(stack.database_url, "SELECT severity, opened_severity FROM incidents WHERE id = %s",
                        (incident["id"],))[0]
    severity, opened = row["severity"], row["opened_severity"]

    after = wait_for(lambda: (s := scrape(metrics_url)) and
                     value(s, "erdu_incidents_closed_total", severity=opened, source="metrics-test") == 1 and s,
                     15, 0.5, what="closed counter to move")
    assert value(after, "erdu_incidents_opened_total", severity=opened, source="metrics-test") == 1
    assert value(after, "erdu_incidents", severity=severity, source="metrics-test", status="closed") == 1
    assert ("erdu_open_incidents", (("severity", severity), ("source", "metrics-test"))) in after
    assert value(after, "erdu_open_incidents", severity=severity, source="metrics-test") == 0
    assert value(after, "erdu_incidents_resolved_total", by="automation") == 1
    assert value(after, "erdu_auto_resolve_ratio") == 1.0
    assert value(after, "erdu_mttr_seconds_count", severity=severity) == 1
    assert value(after, "erdu_mttr_seconds_bucket", severity=severity, le="+Inf") == 1
    assert value(after, "erdu_mttr_seconds_sum", severity=severity) > 0
    for role in ("commander", "diagnostician", "fixer", "resolver"):
        assert value(after, "erdu_stage_latency_seconds_count", role=role) >= 1, role
    assert value(after, "erdu_queue_depth", queue="ingest") == 0


def test_queue_depth_counts_the_messages_waiting_in_a_queue(stack, metrics_url):
    stack.kill("ingest")
    for i in range(3):
        stack.send_event({"message": f"Queue depth probe {i}", "service": "search"})
    wait_for(lambda: value(scrape(metrics_url), "erdu_queue_depth", queue="ingest") == 3, 15, 0.5,
             what="ingest depth 3")


def test_a_scrape_with_redis_unreachable_still_answers_and_says_which_backend_is_down(database_url, tmp_path):
    env = {**os.environ, "ERDU_DATABASE_URL": database_url, "ERDU_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    proc, url = serve_metrics(env, tmp_path)
    try:
        samples = scrape(url)
    finally:
        stop(proc)
    assert value(samples, "erdu_backend_up", backend="redis") == 0
    assert value(samples, "erdu_backend_up", backend="postgres") == 1
    assert ("erdu_failed_tasks_total", (("stage", "assess"),)) in samples    # a Postgres figure, from 0
    assert not any(name == "erdu_queue_depth" for name, _ in samples)
