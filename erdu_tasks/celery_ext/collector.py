"""Python's cyclic garbage collector while a worker starts.

Start-up builds about a hundred thousand objects that live as long as the process (modules, classes,
functions, the settings, the rules and runbooks), and nearly no cyclic garbage. With the collector on,
each generation is walked again and again as that heap grows: about a seventh of a worker's start-up
CPU, spent finding a couple of thousand objects of import-time garbage. So `erdu worker` holds the
collector from its start until Celery's worker_init signal (the task modules are imported, neither the
pool nor the broker connection has started), then moves everything start-up made to the collector's
permanent generation (gc.freeze) and turns it back on. From then on the collector runs as before, on
the objects made after start-up; it never walks the start-up heap again, which also keeps the pages a
prefork pool's children share with their parent from being written by a collection.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_held = False


@contextmanager
def held_until_worker_init() -> Iterator[None]:
    """Hold the collector for the block (a worker's start and run); resume() at worker_init lets it go.
    If the block ends first (a failed start), the collector is turned back on as it was, nothing frozen."""
    global _held
    if not gc.isenabled() or _held:
        yield
        return
    gc.disable()
    _held = True
    try:
        yield
    finally:
        if _held:
            _held = False
            gc.enable()


def resume(**_: object) -> None:
    """Freeze the start-up heap and turn the collector back on (a worker_init receiver; no-op if not held)."""
    global _held
    if _held:
        _held = False
        gc.freeze()
        gc.enable()
