"""The monitors' view of the `monitors` settings section: loading, warnings, the beat schedule.

The section's models live in erdu_tasks.settings.monitors (with the keys documented there); they are
re-exported here for the monitors that use them.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from erdu_tasks import names
from erdu_tasks.settings.monitors import (
    DEFAULT_ERROR_PATTERN,
    DEFAULT_QUIET_PATTERN,
    CeleryConfig,
    DiskThreshold,
    LogFile,
    LogsConfig,
    MonitorsConfig,
    Probe,
    ProbesConfig,
    ProcessRequirement,
    SystemConfig,
    Threshold,
)

__all__ = ["DEFAULT_ERROR_PATTERN", "DEFAULT_QUIET_PATTERN", "CeleryConfig", "DiskThreshold", "LogFile",
           "LogsConfig", "MonitorsConfig", "Probe", "ProbesConfig", "ProcessRequirement", "SystemConfig",
           "Threshold", "SCHEDULE", "load_monitors", "schedule", "warnings"]


def load_monitors(raw: MonitorsConfig | Mapping[str, Any] | None) -> MonitorsConfig:
    """The `monitors` section as a model; a raw dict is validated (ConfigError listing every key at fault)."""
    return MonitorsConfig.from_section(raw)


def warnings(config: MonitorsConfig) -> list[str]:
    """Things that are not errors but probably mistakes: missing log files, disks, empty globs."""
    found: list[str] = []
    if config.logs:
        for f in config.logs.files:
            if f.is_glob:
                if not glob.glob(f.path):
                    found.append(f"monitors.logs: no file matches {f.path} yet")
            elif not Path(f.path).exists():
                found.append(f"monitors.logs: {f.path} does not exist yet; it is tailed once it appears")
    if config.system:
        for d in config.system.disks:
            if not Path(d.path).exists():
                found.append(f"monitors.system.disks: {d.path} does not exist")
    return found


SCHEDULE: dict[str, tuple[str, str]] = {
    "monitor-logs": ("logs", names.MONITOR_LOGS),
    "monitor-probes": ("probes", names.MONITOR_PROBES),
    "monitor-system": ("system", names.MONITOR_SYSTEM),
    "monitor-celery": ("celery", names.MONITOR_CELERY),
}


def schedule(config: MonitorsConfig) -> dict[str, tuple[str, float]]:
    """Beat entry name -> (task name, interval) for every configured monitor."""
    out = {}
    for key, (section, task) in SCHEDULE.items():
        part = getattr(config, section)
        if part is not None:
            out[key] = (task, float(part.interval))
    return out
