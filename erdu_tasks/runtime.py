"""What a worker process builds once: settings, database pool, rules, catalog, runbooks."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from functools import cached_property

from erdu_tasks.catalog import Catalog
from erdu_tasks.escalation.gates import Gates, gates_from_settings
from erdu_tasks.store.db import Database
from erdu_tasks.ingest.detect.rules import RuleSet
from erdu_tasks.settings import Settings, get_settings


@dataclass
class Runtime:
    """The per-process dependencies every task uses, built lazily."""

    settings: Settings
    db: Database = field(init=False)

    def __post_init__(self) -> None:
        self.db = Database(self.settings.database_url, max_size=self.settings.db_pool_max)

    @cached_property
    def rules(self) -> RuleSet:
        """Classification rules: built-in plus the user's file."""
        return RuleSet.load(self.settings.rules_file)

    @cached_property
    def catalog(self) -> Catalog:
        """The service catalog (empty without a file)."""
        return Catalog.load(self.settings.catalog_file)

    @cached_property
    def gates(self) -> Gates:
        """The gate list (silence, inhibition, rate limit, approval) every role asks."""
        return gates_from_settings(self.settings, self.catalog)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The process-wide runtime."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(get_settings())
    return _runtime


def worker_name(hostname: str | None) -> str:
    """Celery node name plus pid, so the timeline names the process that acted."""
    return f"{hostname or socket.gethostname()}/{os.getpid()}"
