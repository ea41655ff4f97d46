"""Send events to ERDU from Python: over Celery (straight into Redis, as `erdu send` does) or over HTTP."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from erdu_tasks import names
from erdu_tasks.errors import ErduError

HTTP_SCHEMES = ("http://", "https://")


class ClientError(ErduError):
    """The event could not be handed to ERDU; the message says why, `retryable` whether trying later helps."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class Client:
    """A small producer: validates events locally, then hands them to ERDU.

    `url` is a Redis URL (events go on the ingest queue; `send` returns the Celery task id) or the
    API's base URL, http(s)://host:port (events are stored before the answer; `send` returns the
    incident id, and `last_answer` holds the whole answer).
    """

    def __init__(self, redis_url: str, *, token: str | None = None, timeout: float = 5.0) -> None:
        self.url = redis_url
        self.redis_url = redis_url
        self.timeout = timeout
        self.last_answer: dict[str, Any] | None = None
        self._celery: Any = None
        self._http: Any = None
        if redis_url.startswith(HTTP_SCHEMES):
            import httpx

            headers = {"Authorization": f"Bearer {token}"} if token else {}
            self._http = httpx.Client(base_url=redis_url.rstrip("/"), headers=headers, timeout=timeout)
        else:
            from celery import Celery

            from erdu_tasks.celery_ext.broker import broker_url

            kombu_url, sentinel_options = broker_url(redis_url)   # sentinel:// as kombu spells it
            self._celery = Celery("erdu-client", broker=kombu_url)
            self._celery.conf.update(task_serializer="json", accept_content=["json"],
                                     broker_connection_retry_on_startup=False, broker_connection_max_retries=1,
                                     broker_transport_options={"socket_connect_timeout": 3, "socket_timeout": 5,
                                                               "max_retries": 1, **sentinel_options})

    @classmethod
    def from_settings(cls, settings: Any) -> "Client":
        """A client for the configured broker."""
        return cls(settings.redis_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Client":
        """ERDU_URL (+ ERDU_API_TOKEN) for HTTP, else ERDU_REDIS_URL, else the local default Redis."""
        env = os.environ if environ is None else environ
        if env.get("ERDU_URL"):
            return cls(env["ERDU_URL"], token=env.get("ERDU_API_TOKEN"))
        from erdu_tasks.settings import DEFAULT_REDIS_URL

        return cls(env.get("ERDU_REDIS_URL") or DEFAULT_REDIS_URL)

    @property
    def over_http(self) -> bool:
        """True when events go to the HTTP API."""
        return self._http is not None

    def send(self, event: dict[str, Any] | list[dict[str, Any]]) -> str:
        """Validate and hand over one event or a batch; returns the task id (Celery) or incident id (HTTP)."""
        from erdu_tasks.errors import InvalidEvent
        from erdu_tasks.ingest.formats.event import parse_events

        try:
            parse_events(event)
        except InvalidEvent as exc:
            raise ClientError(str(exc)) from None
        return self._post(event) if self.over_http else self._enqueue(event)

    def _enqueue(self, event: Any) -> str:
        from erdu_tasks.store.preflight import check_redis

        try:
            check_redis(self.redis_url)
            result = self._celery.send_task(names.INGEST, args=(event,), queue=names.Queue.INGEST.value,
                                            routing_key=names.Queue.INGEST.value, retry=False)
        except ErduError as exc:
            raise ClientError(str(exc), retryable=True) from None
        except Exception as exc:  # kombu raises several connection error types
            from erdu_tasks.settings.common import mask_url

            raise ClientError(f"could not enqueue on {mask_url(str(self.redis_url))}: {exc}", retryable=True) from None
        return result.id

    def _post(self, event: Any) -> str:
        import httpx

        try:
            response = self._http.post("/v1/events", json=event)
        except httpx.HTTPError as exc:
            raise ClientError(f"could not reach ERDU at {self.url}: {exc.__class__.__name__}: {exc}",
                              retryable=True) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            retryable = response.status_code >= 500 or response.status_code in (408, 429)
            raise ClientError(f"ERDU answered {response.status_code}: {str(detail)[:1000]}", retryable=retryable)
        self.last_answer = response.json()
        incidents = self.last_answer.get("incidents") or []
        return incidents[0]["id"] if incidents else ""

    def close(self) -> None:
        """Release connections."""
        if self._http is not None:
            self._http.close()
        if self._celery is not None:
            self._celery.close()


def make_event(message: str, *, source: str = "python", service: str | None = None, severity: str | None = None,
               host: str | None = None, labels: Mapping[str, str] | None = None,
               details: Mapping[str, Any] | None = None, dedup_key: str | None = None, count: int = 1,
               occurred_at: datetime | None = None) -> dict[str, Any]:
    """An event dict in the Event contract (fields left out are filled in by ERDU)."""
    event: dict[str, Any] = {"message": message, "source": source, "count": count,
                             "host": host or socket.gethostname()}
    optional = {"service": service, "severity": severity, "dedup_key": dedup_key,
                "labels": dict(labels) if labels else None, "details": dict(details) if details else None,
                "occurred_at": occurred_at.isoformat() if occurred_at else None}
    event.update({k: v for k, v in optional.items() if v is not None})
    return event


def report_event(message: str, *, url: str | None = None, token: str | None = None, client: Client | None = None,
                 **fields: Any) -> str:
    """Send one event (see make_event for the fields) over HTTP or Celery; returns what Client.send returns.

    Without `client` or `url` it uses ERDU_URL / ERDU_API_TOKEN (HTTP) or ERDU_REDIS_URL (Celery).
    """
    own = client is None
    if client is None:
        client = Client(url, token=token) if url else Client.from_env()
    try:
        return client.send(make_event(message, **fields))
    finally:
        if own:
            client.close()
