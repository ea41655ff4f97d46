"""What Celery beat runs, and how often. Intervals come from settings; names from erdu_tasks.names."""

from __future__ import annotations

from typing import Any

from erdu_tasks import names
from erdu_tasks.escalation.runs import sweep_options
from erdu_tasks.monitors.config import load_monitors
from erdu_tasks.monitors.config import schedule as monitor_schedule
from erdu_tasks.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The beat schedule: reconciler, retention, monitors, heartbeats, escalation sweeper."""
    schedule: dict[str, dict[str, Any]] = {
        "reconcile": {"task": names.RECONCILE, "schedule": settings.reconcile_interval_seconds,
                      "options": {"queue": names.Queue.MONITOR.value, "expires": settings.reconcile_interval_seconds}},
    }
    prune = settings.retention.interval.total_seconds()
    schedule["prune"] = {"task": names.PRUNE, "schedule": prune,
                         "options": {"queue": names.Queue.MONITOR.value, "expires": prune}}
    sweep = sweep_options(settings.escalation).sweep_interval
    schedule["sweep-escalations"] = {"task": names.SWEEP_ESCALATIONS, "schedule": sweep,
                                     "options": {"queue": names.Queue.MONITOR.value, "expires": max(sweep, 1.0)}}
    # Heartbeats: always checked (a heartbeat may be created by its first ping).
    every = settings.heartbeats.check_interval.total_seconds()
    schedule["heartbeats"] = {"task": names.MONITOR_HEARTBEATS, "schedule": every,
                              "options": {"queue": names.Queue.MONITOR.value, "expires": max(every, 1.0)}}
    # Monitors present in settings.monitors, validated here: a bad section stops beat at start-up.
    # A run not started within max(interval, 1 s) expires, so a busy worker never works off stale scans.
    for key, (task, interval) in monitor_schedule(load_monitors(settings.monitors)).items():
        schedule[key] = {"task": task, "schedule": interval,
                         "options": {"queue": names.Queue.MONITOR.value, "expires": max(interval, 1.0)}}
    return schedule
