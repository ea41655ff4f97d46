"""What Celery beat runs, and how often. Intervals come from settings; names from erdu_tasks.names."""

from __future__ import annotations

from typing import Any

from erdu_tasks import names
from erdu_tasks.escalation import sweep_options
from erdu_tasks.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The beat schedule: reconciler, monitors, escalation sweeper."""
    monitors = settings.monitors
    schedule: dict[str, dict[str, Any]] = {
        "reconcile": {"task": names.RECONCILE, "schedule": settings.reconcile_interval_seconds,
                      "options": {"queue": names.Queue.MONITOR.value, "expires": settings.reconcile_interval_seconds}},
    }
    sweep = sweep_options(settings.escalation).sweep_interval
    schedule["sweep-escalations"] = {"task": names.SWEEP_ESCALATIONS, "schedule": sweep,
                                     "options": {"queue": names.Queue.MONITOR.value, "expires": max(sweep, 1.0)}}
    optional = {
        "monitor-logs": (names.MONITOR_LOGS, "logs", 1.0),
        "monitor-probes": (names.MONITOR_PROBES, "probes", 10.0),
        "monitor-system": (names.MONITOR_SYSTEM, "system", 15.0),
        "monitor-celery": (names.MONITOR_CELERY, "celery", 15.0),
    }
    for key, (task, section, default_interval) in optional.items():
        cfg = monitors.get(section)
        if cfg:
            interval = float(cfg.get("interval", default_interval)) if isinstance(cfg, dict) else default_interval
            schedule[key] = {"task": task, "schedule": interval,
                             "options": {"queue": names.Queue.MONITOR.value, "expires": max(interval, 1.0)}}
    return schedule
