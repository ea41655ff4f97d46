"""What a process builds once from its settings: the database pool, rules, catalog, runbooks, brains, escalator.

The worker's Runtime is built by the composition root (erdu_tasks/app.py, beside the Celery app and from
the same settings) and reached through `runtime()`; the API builds its own with its pool size. Everything
is built on first use and then kept for the life of the process, so nothing is parsed per task and no
module keeps a cache of its own.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from erdu_tasks.settings import BrainConfig, CommanderConfig, LearningConfig, MonitorsConfig, Settings
from erdu_tasks.store.db import Database

if TYPE_CHECKING:
    import redis

    from erdu_tasks.catalog import Catalog
    from erdu_tasks.escalation.gates import Gates
    from erdu_tasks.escalation.sweep import Escalator
    from erdu_tasks.fixer.runbooks import RunbookSet
    from erdu_tasks.fixer.urlguard import UrlPolicy
    from erdu_tasks.ingest.detect.rules import RuleSet
    from erdu_tasks.brains import Brains


@dataclass
class Runtime:
    """The per-process dependencies every task uses, each built on first use."""

    settings: Settings
    db: Database = field(default=None)  # type: ignore[assignment]  # built from the settings when not given
    _runbooks: RunbookSet | None = field(default=None, init=False, repr=False)
    _escalator: Escalator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.db is None:
            self.db = Database(self.settings.database_url, max_size=self.settings.db_pool_max,
                               prepare=self.settings.db_prepared_statements)

    @cached_property
    def rules(self) -> RuleSet:
        """Classification rules: built-in plus the user's file."""
        from erdu_tasks.ingest.detect.rules import RuleSet

        return RuleSet.load(self.settings.rules_file)

    @cached_property
    def catalog(self) -> Catalog:
        """The service catalog (empty without a file)."""
        from erdu_tasks.catalog import Catalog

        return Catalog.load(self.settings.catalog_file)

    @cached_property
    def url_policy(self) -> UrlPolicy:
        """Where runbook HTTP requests may go: the catalog's hosts and the runbook_hosts setting."""
        from erdu_tasks.fixer.urlguard import policy_from

        return policy_from(self.settings, self.catalog.hosts())

    @cached_property
    def gates(self) -> Gates:
        """The gate list (silence, inhibition, rate limit, approval) every role asks."""
        from erdu_tasks.escalation.gates import gates_from_settings

        return gates_from_settings(self.settings, self.catalog)

    @property
    def runbooks(self) -> RunbookSet:
        """The runbook set, reloaded when a file in its directory changes."""
        from erdu_tasks.fixer.runbooks import RunbookSet

        if self._runbooks is None or self._runbooks.changed():
            self._runbooks = RunbookSet.load(self.settings.runbooks_dir)
        return self._runbooks

    @cached_property
    def commander(self) -> CommanderConfig:
        """The `commander` section."""
        return CommanderConfig.from_section(self.settings.commander)

    @cached_property
    def learning(self) -> LearningConfig:
        """The `learning` section."""
        return LearningConfig.from_section(self.settings.learning)

    @cached_property
    def monitors(self) -> MonitorsConfig:
        """The `monitors` section."""
        return MonitorsConfig.from_section(self.settings.monitors)

    @cached_property
    def brains(self) -> Brains:
        """The thinking roles' brains: the rules, or the LLM brain where the `brain` section turns it on."""
        from erdu_tasks.brains import build_brains

        return build_brains(BrainConfig.from_section(self.settings.brain))

    @cached_property
    def monitor_redis(self) -> redis.Redis:
        """The Redis client the monitors keep their state in (the broker's Redis)."""
        import redis

        return redis.Redis.from_url(self.settings.redis_url, socket_timeout=10, socket_connect_timeout=5,
                                    health_check_interval=15)

    def escalator(self, worker: str | None = None) -> Escalator:
        """The process's Escalator (config, channels, Redis counters); `worker` names it on first use."""
        if self._escalator is None:
            from erdu_tasks.escalation.sweep import Escalator

            self._escalator = Escalator.from_settings(self.settings, self.db, self.catalog, gates=self.gates,
                                                      worker=worker)
        return self._escalator



def worker_name(hostname: str | None) -> str:
    """Celery node name plus pid, so the timeline names the process that acted."""
    return f"{hostname or socket.gethostname()}/{os.getpid()}"
