"""What every request handler needs: the config, the runtime (database, rules, catalog) and the broker.

Handlers hand stored incidents on with tasks/publish.py's hand_on, through `celery`: the Celery
app built from this context's own settings, so the broker that is pinged is the one published to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from celery import Celery
from fastapi import Request

from erdu_tasks import names
from erdu_tasks.app import make_celery
from erdu_tasks.store.db import Database
from erdu_tasks.errors import TransientError
from erdu_tasks.tasks.people import ActionDone, ActionRefused
from erdu_tasks.store.preflight import redact_redis
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import Settings
from erdu_tasks.api.config import ApiConfig

log = structlog.get_logger("erdu.api")


class BrokerDown(TransientError):
    """Redis cannot be reached, so nothing is accepted (503)."""


@dataclass
class ApiContext:
    """Built once per API process."""

    config: ApiConfig
    rt: Runtime
    broker: redis.Redis
    celery: Celery

    @classmethod
    def build(cls, settings: Settings, config: ApiConfig) -> "ApiContext":
        """Runtime with the API's own pool size and a short pool timeout, a broker ping client and a publisher."""
        rt = Runtime(settings)
        rt.db = Database(settings.database_url, max_size=config.db_pool_max, timeout=config.db_timeout_seconds,
                         prepare=settings.db_prepared_statements)
        broker = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=config.broker_timeout_seconds,
                                      socket_timeout=config.broker_timeout_seconds)
        return cls(config, rt, broker, make_celery(settings))

    def require_broker(self) -> None:
        """BrokerDown unless Redis answers a ping: nothing is accepted that could not be handed on."""
        try:
            self.broker.ping()
        except (redis.RedisError, OSError) as exc:
            raise BrokerDown(f"Redis at {redact_redis(self.rt.settings.redis_url)} is unreachable "
                             f"({exc.__class__.__name__}); nothing was accepted, retry later") from None

    def enqueue_ingest(self, payload: Any) -> str:
        """Put events on the ingest queue; BrokerDown if Redis refuses (the caller answers 503)."""
        self.require_broker()
        try:
            result = self.celery.send_task(names.INGEST, args=(payload,), queue=names.Queue.INGEST.value,
                                           routing_key=names.Queue.INGEST.value, retry=False)
        except Exception as exc:  # kombu raises several connection error types
            raise BrokerDown(f"could not enqueue on Redis: {exc.__class__.__name__}: {exc}") from None
        return result.id

    def try_action(self, action: Callable[..., ActionDone], incident_id: str, who: str,
                   **kwargs: Any) -> ActionDone | None:
        """Run a people action (acknowledge, resolve...); None if the incident's state refuses it."""
        try:
            return action(self.rt, incident_id, who, **kwargs)
        except ActionRefused as exc:
            log.info("action refused", action=action.__name__, incident_id=incident_id, reason=str(exc))
            return None

    def close(self) -> None:
        """Release the pool and the broker connection."""
        self.rt.db.close()
        self.broker.close()
        self.celery.close()


def context(request: Request) -> ApiContext:
    """Dependency: the process's ApiContext."""
    return request.app.state.erdu
