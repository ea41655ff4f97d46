"""The monitor tasks beat runs on the `monitor` queue: thin wrappers around erdu_tasks.monitors.

A run that meets an outage (Postgres, Redis) logs it and returns: the next tick, a second or
a few away, is the retry, so a monitor never piles retries on top of its own schedule. A run
that fails for any other reason fails the task (recorded in failed_tasks by ErduTask, and so
reported by the Celery health monitor).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar


from erdu_tasks import names
from erdu_tasks.app import app
from erdu_tasks.errors import TransientError
from celery import signals

from erdu_tasks.monitors import celery_health, http_probe, logtail, logwatch, system
from erdu_tasks.monitors.config import LogsConfig, MonitorsConfig
from erdu_tasks.app import runtime
from erdu_tasks.tasks.base import ErduTask, log
from erdu_tasks.tasks.publish import hand_on

T = TypeVar("T")


def _config() -> MonitorsConfig:
    return runtime().monitors


def _host(config: MonitorsConfig) -> str:
    return config.host or socket.gethostname()


def _assess(incident_id: str) -> None:
    hand_on(names.Stage.ASSESS, incident_id)


def _resolved(incident_id: str) -> None:
    hand_on("resolve", incident_id)   # the resolver writes the report and tells everyone notified


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _run(what: str, fn: Callable[[], T]) -> T | dict[str, Any]:
    try:
        return fn()
    except TransientError as exc:
        log.warning("monitor run skipped: outage", monitor=what, error=str(exc))
        return {"skipped": str(exc)}


@app.task(name=names.MONITOR_LOGS, base=ErduTask, bind=True)
def monitor_logs(self: ErduTask) -> dict[str, Any]:
    """Tail every watched log file once."""
    config = _config()
    if config.logs is None:
        return {"skipped": "no monitors.logs section"}
    rt = runtime()
    deps = logtail.TailDeps(db=rt.db, redis=rt.monitor_redis, rt=rt, notify=_assess, host=_host(config))
    if config.logs.watch:
        _ensure_watcher(config.logs, deps)

    def scan() -> dict[str, Any]:
        stats = logtail.scan(config.logs, deps)
        _log_notes(stats)
        return {"files": len(stats), "lines": sum(s.lines for s in stats), "events": sum(s.events for s in stats),
                "new_incidents": sum(s.new_incidents for s in stats),
                "skipped": {s.path: s.skipped for s in stats if s.skipped}}

    return _run("logs", scan)


def _log_notes(stats: list[logtail.FileStats]) -> None:
    for s in stats:
        for note in s.notes:
            log.info("log tailer", path=s.path, note=note)


_watcher: logwatch.Watcher | None = None
_watcher_started = 0.0
_watcher_lock = threading.Lock()
WATCHER_RESTART_SECONDS = 30.0
"""A watcher that stopped (its directory did not exist yet, inotify failed) is tried again this often."""


def _ensure_watcher(config: LogsConfig, deps: logtail.TailDeps) -> None:
    """The monitor worker's one inotify watcher (logwatch.py), started by its first log scan."""
    global _watcher, _watcher_started
    with _watcher_lock:
        if _watcher is not None and (_watcher.running or time.monotonic() - _watcher_started < WATCHER_RESTART_SECONDS):
            return
        _watcher_started = time.monotonic()
        _watcher = logwatch.Watcher(config, deps, on_scan=_log_notes).start()


@signals.worker_shutdown.connect
def _stop_watcher(**_: Any) -> None:
    if _watcher is not None:
        _watcher.stop()


@app.task(name=names.MONITOR_PROBES, base=ErduTask, bind=True)
def monitor_probes(self: ErduTask) -> dict[str, Any]:
    """Run every HTTP probe once."""
    config = _config()
    if config.probes is None:
        return {"skipped": "no monitors.probes section"}
    rt = runtime()

    def run() -> dict[str, Any]:
        decisions = http_probe.run_probes(config.probes, rt.db, rt, _assess,
                                          host=_host(config), now=_now, resolved=_resolved)
        return {d.observation.key: d.verdict.value for d in decisions}

    return _run("probes", run)


@app.task(name=names.MONITOR_SYSTEM, base=ErduTask, bind=True)
def monitor_system(self: ErduTask) -> dict[str, Any]:
    """Sample CPU, memory, disks and processes once."""
    config = _config()
    if config.system is None:
        return {"skipped": "no monitors.system section"}
    rt = runtime()

    def run() -> dict[str, Any]:
        decisions = system.run_system(config.system, rt.db, rt, _assess, host=_host(config),
                                      now=_now, resolved=_resolved)
        return {d.observation.key: d.verdict.value for d in decisions}

    return _run("system", run)


def _ping(timeout: float) -> dict[str, Any] | None:
    return app.control.inspect(timeout=timeout).ping()


@app.task(name=names.MONITOR_CELERY, base=ErduTask, bind=True)
def monitor_celery(self: ErduTask) -> dict[str, Any]:
    """Check failed tasks, live workers per role and queue backlogs once."""
    config = _config()
    if config.celery is None:
        return {"skipped": "no monitors.celery section"}
    rt = runtime()

    def run() -> dict[str, Any]:
        return celery_health.run_celery(config.celery, rt.db, rt.monitor_redis, _ping, rt, _assess,
                                        host=_host(config), now=_now)

    return _run("celery", run)
