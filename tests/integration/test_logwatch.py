"""The inotify watcher reads a log file as it is written, with no beat scan, and shares the tailer's offsets."""

from __future__ import annotations

import redis

from erdu_tasks.monitors import logtail, logwatch
from erdu_tasks.monitors.config import load_monitors
from erdu_tasks.store.db import Database
from tests.conftest import incident_rows, wait_for
from tests.integration.test_monitors import ingest_rt


def test_a_write_is_read_by_the_watcher_alone_and_never_twice_with_a_scan(fresh_database_url, redis_server, tmp_path):
    db = Database(fresh_database_url)
    client = redis.Redis.from_url(redis_server.url)
    created: list[str] = []
    deps = logtail.TailDeps(db=db, redis=client, rt=ingest_rt(fresh_database_url), notify=created.append, host="h")
    path = tmp_path / "app.log"
    path.write_bytes(b"")
    config = load_monitors({"logs": {"files": [{"path": str(path), "service": "orders", "from_start": True}]}}).logs
    assert logwatch.directories(config) == {str(tmp_path): False}
    logtail.scan(config, deps)                      # registers the file at offset 0, as the first beat scan does
    watcher = logwatch.Watcher(config, deps).start()
    try:
        wait_for(lambda: watcher.running, 10, what="the watcher to start")
        with open(path, "ab", buffering=0) as out:
            out.write(b"2024-05-01T10:00:00 ERROR ledger export failed for batch 7\n")
            wait_for(lambda: len(created) == 1, 10, what="the watcher to read the first write")
            out.write(b"2024-05-01T10:00:01 ERROR ledger export failed for batch 8\n"
                      b"2024-05-01T10:00:01 ERROR search index missing shard 3\n")
            wait_for(lambda: len(created) == 2, 10, what="the watcher to read the second write")
        logtail.scan(config, deps)                  # the beat's scan finds nothing left to read
        rows = incident_rows(fresh_database_url, "SELECT occurrences FROM incidents ORDER BY created_at")
        assert [r["occurrences"] for r in rows] == [2, 1]
    finally:
        watcher.stop()
        db.close()
        client.close()
    assert not watcher.running
