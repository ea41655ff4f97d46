"""The shell producer example: a raw redis-cli LPUSH of a Celery message becomes an incident."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ROOT, incident_rows, wait_for

SCRIPT = ROOT / "examples" / "redis-lpush.sh"


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed")
def test_the_redis_lpush_example_creates_an_incident(stack_factory):
    stack = stack_factory()
    stack.start("ingest")
    env = {"PATH": "/usr/bin:/bin", "ERDU_REDIS_URL": stack.redis_url}
    event = '{"message": "Nightly backup failed: no space left on device", "service": "backup", "source": "cron"}'
    done = subprocess.run(["sh", str(SCRIPT), event], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    assert len(task_id) == 36
    rows = wait_for(lambda: incident_rows(stack.database_url, "SELECT service, source, title FROM incidents"),
                    60, what="the incident from the shell producer")
    assert rows == [{"service": "backup", "source": "cron", "title": rows[0]["title"]}]
    assert "backup failed" in rows[0]["title"].lower() or "no space" in rows[0]["title"].lower()

    # From stdin, a batch; and a malformed event is refused and kept with the reason, not lost.
    batch = '[{"message": "Nightly backup failed: no space left on device", "service": "backup", "source": "cron"}]'
    done = subprocess.run(["sh", str(SCRIPT)], input=batch, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: incident_rows(stack.database_url, "SELECT occurrences FROM incidents")[0]["occurrences"] == 2,
             30, what="the batch counted on the same incident")
    done = subprocess.run(["sh", str(SCRIPT), '{"message": "x", "count": "lots"}'], env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0
    rejected = wait_for(lambda: incident_rows(stack.database_url, "SELECT error FROM rejected_events"), 30,
                        what="the refused event kept")
    assert "count" in rejected[0]["error"]
