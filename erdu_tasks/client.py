"""Send events to ERDU from Python: over Celery (straight into Redis) — the same path `erdu send` uses."""

from __future__ import annotations

from typing import Any

from . import names
from .errors import ErduError


class ClientError(ErduError):
    """The event could not be handed to ERDU; the message says why."""


class Client:
    """A small producer: validates events locally, then enqueues them on the ingest queue."""

    def __init__(self, redis_url: str) -> None:
        from celery import Celery

        self.redis_url = redis_url
        self._celery = Celery("erdu-client", broker=redis_url)
        self._celery.conf.update(task_serializer="json", accept_content=["json"],
                                 broker_connection_retry_on_startup=False, broker_connection_max_retries=1,
                                 broker_transport_options={"socket_connect_timeout": 3, "socket_timeout": 5,
                                                           "max_retries": 1})

    @classmethod
    def from_settings(cls, settings: Any) -> "Client":
        """A client for the configured broker."""
        return cls(settings.redis_url)

    def send(self, event: dict[str, Any] | list[dict[str, Any]]) -> str:
        """Validate and enqueue one event or a batch; returns the Celery task id."""
        from .errors import InvalidEvent
        from .ingest import parse_events
        from .preflight import check_redis

        try:
            parse_events(event)
        except InvalidEvent as exc:
            raise ClientError(str(exc)) from None
        try:
            check_redis(self.redis_url)
            result = self._celery.send_task(names.INGEST, args=(event,), queue=names.Queue.INGEST.value,
                                            routing_key=names.Queue.INGEST.value, retry=False)
        except ErduError as exc:
            raise ClientError(str(exc)) from None
        except Exception as exc:  # kombu raises several connection error types
            raise ClientError(f"could not enqueue on {self.redis_url}: {exc}") from None
        return result.id
