"""The `monitors.celery_apps` section: the team's own Celery apps ERDU watches.

Example (every key but `apps[].name` and `apps[].broker_url` is optional)::

    monitors:
      celery_apps:
        retention_days: 14           # task history older than this (last change) is deleted
        flush_interval: 0.5          # seconds between writes of history and incidents
        check_interval: 2            # seconds between queue samples and deadline checks
        apps:
          - name: shop               # letters, digits, '_', '-', '.'; names the app everywhere
            broker_url: redis://10.0.0.5:6379/0
            service: shop            # the service its incidents are about (default: the name)
            queues: [celery, emails] # queues whose length is sampled (stall, backlog)
            default_queue: celery    # where a retried task goes when no route and no task-sent event says
            routes: {"shop.mail.*": emails}   # task name (fnmatch) -> queue, for retries
            in_app: [shop]           # module prefixes whose frames are the app's own (traceback grouping)
            thresholds:
              offline_after: 10      # seconds without a heartbeat before a worker is offline
              stall_for: 30          # queue waiting, not shrinking, every worker online and idle this long
              start_within: 300      # a received task not started this long after (its eta) is overdue
              finish_within: 3600    # a started task not finished this long after is overdue
              backlog_window: 60     # seconds of samples the growth rate is measured over
              backlog_min: 100       # a queue shorter than this is never a backlog incident
              next_within: 60        # a chain's next step or a chord's body not received this long after
            periodic: {"shop.reports.nightly": 86400, "shop.cache.refresh": 60}   # beat's schedule
            followed_by: {"shop.orders.charge": "shop.orders.ship"}   # a chain known by name
            result_backend_url: redis://10.0.0.5:6379/1   # exact args of failed tasks (result_extended)
            severity: {failure: P3, offline: P2, stalled: P2, overdue: P3, duplicate: P3, backlog: P2,
                       double_schedule: P3, workflow: P2}

Workers of the app must send task events (`celery worker -E`, or `worker_send_task_events = True`);
`task_send_sent_event = True` on its producers also records each task's queue and routing key.
Chains and chords are followed when the app calls `erdu_tasks.client.celery_workflows.announce_next_steps(app)`
(or, by task name, through `followed_by`).
"""

from __future__ import annotations

import fnmatch
from pydantic import Field, field_validator, model_validator

from erdu_tasks.model import Severity
from erdu_tasks.settings.common import Section

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
QUEUE_PATTERN = r"^[A-Za-z0-9_.:@-]{1,200}$"



class AppThresholds(Section):
    """When a watched condition becomes an incident (seconds unless said otherwise)."""

    offline_after: float = Field(default=10.0, gt=0, le=86400)
    stall_for: float = Field(default=30.0, gt=0, le=86400)
    start_within: float = Field(default=300.0, gt=0, le=7 * 86400)
    finish_within: float = Field(default=3600.0, gt=0, le=7 * 86400)
    backlog_window: float = Field(default=60.0, gt=0, le=86400)
    backlog_min: int = Field(default=100, ge=1)
    next_within: float = Field(default=60.0, gt=0, le=7 * 86400)
    """A chain's next step, a chord's body or a `followed_by` task not received this long after the task
    before it succeeded (for a chord: its last header task) is a broken workflow."""


class AppSeverities(Section):
    """The severity of each kind of incident a Celery app opens."""

    failure: Severity = Severity.P3
    offline: Severity = Severity.P2
    stalled: Severity = Severity.P2
    overdue: Severity = Severity.P3
    duplicate: Severity = Severity.P3
    backlog: Severity = Severity.P2
    double_schedule: Severity = Severity.P3
    workflow: Severity = Severity.P2


class CeleryApp(Section):
    """One watched Celery app: its broker, queues, routes for retries and thresholds."""

    name: str = Field(pattern=NAME_PATTERN)
    broker_url: str = Field(min_length=1)
    service: str | None = Field(default=None, max_length=128)
    queues: list[str] = Field(default_factory=lambda: ["celery"])
    default_queue: str = Field(default="celery", pattern=QUEUE_PATTERN)
    routes: dict[str, str] = Field(default_factory=dict)
    in_app: list[str] = Field(default_factory=list)
    thresholds: AppThresholds = Field(default_factory=AppThresholds)
    severity: AppSeverities = Field(default_factory=AppSeverities)
    offline_on_shutdown: bool = True
    """A worker that says goodbye (a warm shutdown) is an offline incident too; false: only silent losses."""
    periodic: dict[str, float] = Field(default_factory=dict)
    """Beat-scheduled task name -> its period in seconds: received twice within half a period is an incident
    (two beats running one schedule, or the schedule listed twice)."""
    followed_by: dict[str, str] = Field(default_factory=dict)
    """Task name -> the task that must follow each success of it, as its child (its parent_id): a chain
    known by name, for apps that do not announce their next steps (client/celery_workflows.py)."""
    result_backend_url: str | None = None
    """The app's Redis result backend, read for the exact args and kwargs of failed tasks when the app sets
    `result_extended = True` (JSON results only; anything else is not read). Without it, a retry sends the
    values the events' reprs stand for, and only when those are plain literals."""
    result_key_prefix: str = Field(default="celery-task-meta-", max_length=200)
    track_tasks: int = Field(default=200_000, ge=100, le=10_000_000)
    """Tasks remembered in memory for double-execution and deadline checks (the oldest are forgotten)."""

    @field_validator("broker_url")
    @classmethod
    def _redis(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("only Redis brokers are watched (redis://, rediss:// or unix://)")
        return url

    @field_validator("result_backend_url")
    @classmethod
    def _redis_backend(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("only Redis result backends are read (redis://, rediss:// or unix://)")
        return url

    @field_validator("queues")
    @classmethod
    def _queues(cls, queues: list[str]) -> list[str]:
        import re

        bad = [q for q in queues if not re.fullmatch(QUEUE_PATTERN, q)]
        if bad:
            raise ValueError(f"invalid queue name(s): {', '.join(map(repr, bad))}")
        return list(dict.fromkeys(queues))

    @field_validator("periodic")
    @classmethod
    def _periods(cls, periodic: dict[str, float]) -> dict[str, float]:
        bad = [n for n, p in periodic.items() if isinstance(p, bool) or not isinstance(p, (int, float)) or p <= 0]
        if bad:
            raise ValueError(f"periods must be positive numbers of seconds: {', '.join(bad)}")
        return periodic

    @field_validator("routes")
    @classmethod
    def _routes(cls, routes: dict[str, str]) -> dict[str, str]:
        import re

        bad = [q for q in routes.values() if not re.fullmatch(QUEUE_PATTERN, q)]
        if bad:
            raise ValueError(f"invalid queue name(s): {', '.join(map(repr, bad))}")
        return routes

    @property
    def service_name(self) -> str:
        """The service this app's incidents are about."""
        return self.service or self.name

    def queue_for(self, task_name: str) -> str:
        """The queue a retried task is sent to when its own was not recorded: the first matching route."""
        for pattern, queue in self.routes.items():
            if fnmatch.fnmatchcase(task_name, pattern):
                return queue
        return self.default_queue


class CeleryAppsConfig(Section):
    """The team's Celery apps, and how their task history is kept."""

    apps: list[CeleryApp] = Field(min_length=1)
    retention_days: float = Field(default=14.0, gt=0, le=3650)
    flush_interval: float = Field(default=0.5, gt=0, le=60)
    check_interval: float = Field(default=2.0, gt=0, le=3600)
    max_arg_chars: int = Field(default=8192, ge=256, le=1_000_000)
    """Longer args/kwargs reprs are cut (and then cannot be retried: a cut repr is not the value)."""

    @model_validator(mode="after")
    def _unique(self) -> "CeleryAppsConfig":
        seen = [a.name for a in self.apps]
        dupes = sorted({n for n in seen if seen.count(n) > 1})
        if dupes:
            raise ValueError(f"app names must be unique; repeated: {', '.join(dupes)}")
        return self

    def app(self, name: str) -> CeleryApp | None:
        """The app of that name, if configured."""
        return next((a for a in self.apps if a.name == name), None)
