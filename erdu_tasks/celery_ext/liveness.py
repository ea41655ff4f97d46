"""Liveness of a worker or beat process without asking Redis or Postgres: a file it keeps touching.

A liveness probe that pings the worker through the broker (`celery inspect ping`) fails on every pod at
once when Redis blips, and the restarts that follow turn a blip into an outage. This file is touched every
few seconds by a thread of the process itself, from the moment it starts (before it connects to
anything), so it goes stale only when the process is wedged; `erdu alive` (the probe) reads its age.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

INTERVAL_SECONDS = 5.0
"""How often the file is touched."""


def alive_file(state_dir: Path, kind: str) -> Path:
    """Where a process of this kind (`worker`, `beat`) keeps its liveness file."""
    return Path(state_dir) / f"alive-{kind}"


def keep_touching(path: Path, every: float = INTERVAL_SECONDS) -> threading.Thread:
    """Touch `path` now and every `every` seconds from a daemon thread, for as long as the process lives."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()

    def loop() -> None:
        while True:
            time.sleep(every)
            try:
                path.touch()
            except OSError:   # a full or vanished disk: the file ages and the probe says so
                pass

    thread = threading.Thread(target=loop, name="erdu-liveness", daemon=True)
    thread.start()
    return thread


def age_seconds(path: Path) -> float | None:
    """Seconds since the file was last touched, or None if it does not exist."""
    try:
        return max(0.0, time.time() - os.stat(path).st_mtime)
    except FileNotFoundError:
        return None
