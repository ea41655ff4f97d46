"""Every queue, task and key name ERDU uses, in one place."""

from enum import StrEnum


class Queue(StrEnum):
    """Broker queues; each role pool consumes exactly one."""

    INGEST = "ingest"
    MONITOR = "monitor"
    COMMANDER = "commander"
    DIAGNOSTICIAN = "diagnostician"
    FIXER = "fixer"
    RESOLVER = "resolver"


ROLES: tuple[str, ...] = tuple(q.value for q in Queue)

# Task names are a public contract (any Celery client may send erdu.ingest).
INGEST = "erdu.ingest"
ASSESS = "erdu.assess"
DIAGNOSE = "erdu.diagnose"
FIX = "erdu.fix"
RESOLVE = "erdu.resolve"
ESCALATE = "erdu.escalate"
RECONCILE = "erdu.reconcile"
SWEEP_ESCALATIONS = "erdu.sweep_escalations"
AUTO_RESOLVE = "erdu.auto_resolve"
MONITOR_LOGS = "erdu.monitor.logs"
MONITOR_PROBES = "erdu.monitor.probes"
MONITOR_SYSTEM = "erdu.monitor.system"
MONITOR_CELERY = "erdu.monitor.celery"

# Stage name -> (task name, queue). The pipeline and the reconciler both read this.
STAGES: dict[str, tuple[str, Queue]] = {
    "assess": (ASSESS, Queue.COMMANDER),
    "diagnose": (DIAGNOSE, Queue.DIAGNOSTICIAN),
    "fix": (FIX, Queue.FIXER),
    "resolve": (RESOLVE, Queue.RESOLVER),
}

# Routing: the single table every producer and worker uses.
TASK_ROUTES: dict[str, dict[str, str]] = {
    INGEST: {"queue": Queue.INGEST.value},
    ASSESS: {"queue": Queue.COMMANDER.value},
    DIAGNOSE: {"queue": Queue.DIAGNOSTICIAN.value},
    FIX: {"queue": Queue.FIXER.value},
    RESOLVE: {"queue": Queue.RESOLVER.value},
    ESCALATE: {"queue": Queue.COMMANDER.value},
    RECONCILE: {"queue": Queue.MONITOR.value},
    SWEEP_ESCALATIONS: {"queue": Queue.MONITOR.value},
    AUTO_RESOLVE: {"queue": Queue.MONITOR.value},
    "erdu.monitor.*": {"queue": Queue.MONITOR.value},
}

# Dedup key namespaces of ERDU's own sources. A key in one of them is refused from any other producer,
# so no producer can pre-open (and squat on) the incident a later alert, probe or monitor event lands on.
OWN_DEDUP_NAMESPACES: tuple[str, ...] = ("alertmanager:", "pagerduty:", "probe:", "celery:", "logtail:",
                                         "system:", "erdu:")

# Redis keys owned by ERDU (besides the broker's own).
BEAT_LOCK_KEY = "erdu:beat:lock"
REDBEAT_PREFIX = "erdu:redbeat:"
TAIL_LOCK_PREFIX = "erdu:monitor:tail:"  # + sha1(path): one log tailer per file at a time
NOTIFY_RATE_PREFIX = "erdu:notify:rate:"  # + channel:window: notifications per channel per minute
