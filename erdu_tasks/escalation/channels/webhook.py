"""Generic webhook channel: the notification's JSON, POSTed with an HMAC-SHA256 signature.

Headers sent with every request:

- `X-ERDU-Timestamp`: Unix seconds when the request was signed.
- `X-ERDU-Signature`: `sha256=` + hex HMAC-SHA256(secret, timestamp + "." + body), where body
  is the exact request body bytes. Binding the timestamp lets a receiver refuse replays.
- `X-ERDU-Event`: `trigger`, `resolve` or `digest`.

A receiver checks a request with `verify_signature(secret, timestamp, body, signature, now=...)`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING

from erdu_tasks.escalation.channels.base import BaseChannel, DeliveryResult, Notification, post_json, unix_now
from erdu_tasks.settings.escalation import WebhookSettings

if TYPE_CHECKING:
    import httpx   # imported where a request is made: most processes never make one

SIGNATURE_HEADER = "X-ERDU-Signature"
TIMESTAMP_HEADER = "X-ERDU-Timestamp"
EVENT_HEADER = "X-ERDU-Event"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header value for a body sent at a timestamp."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: bytes, timestamp: str, body: bytes, signature: str, *, now: float, tolerance: float = 300.0
) -> bool:
    """True when the signature matches and the timestamp is within tolerance of now."""
    try:
        age = abs(now - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance and hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookChannel(BaseChannel):
    """POSTs the signed JSON payload to one URL."""

    def __init__(
        self,
        name: str,
        settings: WebhookSettings,
        *,
        clock: Callable[[], int] = unix_now,
        client: httpx.Client | None = None,
    ) -> None:
        super().__init__(name, settings)
        self.url = settings.url
        self._secret = settings.secret.get_secret_value().encode()
        self._headers = dict(settings.headers)
        self._clock = clock
        self._client = client

    def _deliver(self, notification: Notification) -> DeliveryResult:
        body = notification.to_json_bytes()
        timestamp = str(int(self._clock()))
        headers = {
            **self._headers,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
            EVENT_HEADER: notification.kind.value,
        }
        return post_json(self.name, self.url, body, timeout=self.settings.timeout, headers=headers, client=self._client)
