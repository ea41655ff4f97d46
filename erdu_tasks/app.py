"""The composition root: the Celery app and the process-wide Runtime, both built from one Settings.

Importing this module builds the Celery app from the settings; the Runtime (database pool, rules,
catalog, runbooks, brains, escalator) is built from the same settings on first use and then passed to
everything a task calls. Processes that need no Celery app (the API) build their own Runtime.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from erdu_tasks.celery_ext import broker, remote_control
from erdu_tasks import names
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import Settings, get_settings

# The task modules each role's worker imports: a worker only needs the tasks its queue carries
# (others are published by name), which keeps every process smaller.
ROLE_TASK_MODULES: dict[str, list[str]] = {
    "ingest": ["erdu_tasks.tasks.ingest", "erdu_tasks.tasks.heartbeats"],
    "commander": ["erdu_tasks.tasks.pipeline", "erdu_tasks.tasks.escalate"],
    "diagnostician": ["erdu_tasks.tasks.pipeline"],
    "fixer": ["erdu_tasks.tasks.fix"],
    "resolver": ["erdu_tasks.tasks.pipeline"],
    "monitor": ["erdu_tasks.tasks.reconcile", "erdu_tasks.tasks.retention", "erdu_tasks.tasks.monitors", "erdu_tasks.tasks.sweep_escalations",
                "erdu_tasks.tasks.heartbeats"],
}

TASK_MODULES = [
    "erdu_tasks.tasks.ingest",
    "erdu_tasks.tasks.pipeline",
    "erdu_tasks.tasks.fix",
    "erdu_tasks.tasks.escalate",
    "erdu_tasks.tasks.reconcile",
    "erdu_tasks.tasks.retention",
    "erdu_tasks.tasks.monitors",
    "erdu_tasks.tasks.sweep_escalations",
    "erdu_tasks.tasks.heartbeats",
]


class ErduCelery(Celery):
    """Celery, except that a broker connection gets its password from the transport, not from app.conf."""

    def _connection(self, url: Any, userid: Any = None, password: Any = None, *args: Any, **kwargs: Any) -> Any:
        connection = super()._connection(url, userid, password, *args, **kwargs)
        if not connection.password:
            remembered = broker.password_for(connection.hostname, connection.port, connection.userid)
            if remembered is not None:
                connection.password = remembered
        return connection


def make_celery(settings: Settings) -> Celery:
    """Build the Celery app from settings: JSON only, late acks, one queue per role."""
    # A queue entry that is not a message envelope is rejected instead of breaking the consumer; the
    # transport also keeps the broker's password, which stays off app.conf.
    broker.install(max_entry_bytes=2 * settings.api.max_body_bytes)
    # A sentinel:// URL becomes kombu's form plus the transport option naming the master.
    broker_url, sentinel_options = broker.broker_url(settings.redis_url)
    app = ErduCelery("erdu", broker=broker.without_password(broker_url), include=TASK_MODULES)
    exchange = Exchange("erdu", type="direct")
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            # Longer than the longest stage, far below the one-hour default, so a message held by a
            # dead worker comes back in minutes, not an hour.
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for messages whose visibility timeout passed every 5 s (kombu's default sweeps
            # every 10 s x throttle 10, which adds up to 100 s to every redelivery).
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "health_check_interval": 15,
            "retry_on_timeout": True,
            **sentinel_options,
        },
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_default_queue=names.Queue.INGEST.value,
        task_default_exchange="erdu",
        task_queues=[Queue(q.value, exchange, routing_key=q.value) for q in names.Queue],
        task_routes=names.TASK_ROUTES,
        task_create_missing_queues=False,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_track_started=False,
        timezone="UTC",
        enable_utc=True,
        beat_schedule={},
    )
    # The settings (tokens, keys, the database URL) stay off app.conf, which `inspect conf` and Flower show.
    app.erdu_settings = settings
    # No log line shows a secret of the settings, whoever logs it (erdu_tasks/celery_ext/logs.py).
    from erdu_tasks.celery_ext.logs import register_secrets
    from erdu_tasks.settings import secret_values

    register_secrets(secret_values(settings))
    remote_control.install()
    # Worker and beat keep a liveness file fresh from their first moment, asking nothing of Redis or Postgres
    # (`erdu alive` reads it: the Kubernetes liveness probe).
    from celery import signals

    from erdu_tasks.celery_ext import liveness

    for signal, kind in ((signals.worker_init, "worker"), (signals.beat_init, "beat")):
        signal.connect(lambda kind=kind, **_: liveness.keep_touching(liveness.alive_file(settings.state_dir, kind)),
                       weak=False, dispatch_uid=f"erdu-liveness-{kind}")
    # A worker whose consumer goes quiet while work waits reconnects instead of idling forever.
    from erdu_tasks.celery_ext.consumer_guard import ConsumerGuard

    app.steps["consumer"].add(ConsumerGuard)
    return app


app = make_celery(get_settings())

_runtime: Runtime | None = None


def runtime() -> Runtime:
    """The process's one Runtime, from the settings the Celery app was built with (built on first use)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(app.erdu_settings)
    return _runtime


# Workers and beat log JSON lines (erdu_tasks/logs.py), with the incident id bound around each task.
from erdu_tasks.celery_ext.logs import install_celery_hooks  # noqa: E402

install_celery_hooks()
