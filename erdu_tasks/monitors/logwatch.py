"""Reading log files as soon as they are written: an inotify watcher in front of the tailer.

The tailer (logtail.py) is driven by the beat every `interval` seconds. When `watch` is on (the
default) the monitor worker also runs one watcher thread, started by its first log scan: it waits
on the watched files' directories through watchfiles (inotify on Linux, the native API elsewhere)
and scans a file as soon as it changes. Both go through the same per-file Redis lock and the same
compare-and-set on the stored offset, so they never read a line twice; the beat's scan stays the
fallback (a filesystem without inotify — NFS, some FUSE mounts — a watcher that failed, held
partial lines and rotations that wait on time, not on writes).

A scan that finds another scan holding a file's lock tries again a few milliseconds later, so a
write that landed just after the other scan read the file is not left for the next beat.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import structlog

from erdu_tasks.files import root_of
from erdu_tasks.monitors import logtail
from erdu_tasks.monitors.config import LogsConfig

log = structlog.get_logger("erdu.monitors.logwatch")

RETRY_BUSY_SECONDS = 0.01
RETRY_BUSY_TIMES = 50


def directories(config: LogsConfig) -> dict[str, bool]:
    """The directories to watch (existing ones), each with whether to watch below it (a `**` glob)."""
    out: dict[str, bool] = {}
    for watch in config.files:
        root = root_of(watch.path) if watch.is_glob else os.path.dirname(watch.path)
        if os.path.isdir(root):
            out[root] = out.get(root, False) or "**" in watch.path
    return out


def scan_changed(config: LogsConfig, deps: logtail.TailDeps, changed: set[str],
                 sleep: Callable[[float], None] = time.sleep) -> list[logtail.FileStats]:
    """Scan the changed files; a file another scan holds is tried again shortly, a few times."""
    results: list[logtail.FileStats] = []
    pending = changed
    for attempt in range(RETRY_BUSY_TIMES + 1):
        stats = logtail.scan(config, deps, only=pending)
        busy = {s.path for s in stats if s.skipped == logtail.BUSY}
        results += [s for s in stats if s.path not in busy or attempt == RETRY_BUSY_TIMES]
        if not busy:
            break
        pending = busy
        sleep(RETRY_BUSY_SECONDS)
    return results


class Watcher:
    """One thread that scans watched files as their directories report writes; `stop()` ends it."""

    def __init__(self, config: LogsConfig, deps: logtail.TailDeps,
                 on_scan: Callable[[list[logtail.FileStats]], None] = lambda stats: None) -> None:
        self.config = config
        self.deps = deps
        self.on_scan = on_scan
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="erdu-logwatch", daemon=True)
        self.running = False

    def start(self) -> Watcher:
        """Start the thread (it returns at once if there is nothing to watch or watchfiles is missing)."""
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to end and wait for it."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            import watchfiles
        except ImportError:
            log.warning("log watcher off: watchfiles is not installed; the scan every interval reads the files")
            return
        dirs = directories(self.config)
        if not dirs:
            log.info("log watcher off: no watched directory exists yet; the scan every interval reads the files")
            return
        recursive = any(dirs.values())
        self.running = True
        try:
            for changes in watchfiles.watch(*dirs, watch_filter=None, debounce=self.config.watch_debounce_ms,
                                            step=1, stop_event=self._stop, rust_timeout=1000,
                                            recursive=recursive, raise_interrupt=False):
                changed = {path for _, path in changes}
                try:
                    self.on_scan(scan_changed(self.config, self.deps, changed))
                except Exception as exc:   # an outage: the next write or the next beat scan tries again
                    log.warning("log watcher scan failed", error=str(exc))
        except Exception as exc:   # inotify unavailable or out of watches: polling carries on alone
            log.warning("log watcher stopped; the scan every interval reads the files", error=str(exc))
        finally:
            self.running = False
