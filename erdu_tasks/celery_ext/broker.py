"""The Redis broker transport, hardened: foreign queue entries and a vanished broker do not stop a worker.

Any client may LPUSH onto ERDU's queues. kombu's Redis transport assumes every entry is its own
envelope; anything else (say `{"hello": 1}`) raises inside the worker's event loop, which then
drops the entry without a trace and reconnects, handing back every message it held. An entry that is
not JSON at all (`LPUSH commander "not json"`) is worse: kombu decodes it before any hook of Celery's
runs, and the JSONDecodeError stops the worker ("Unrecoverable error"; celery/celery#4308, and
celery/kombu#2421 for the same on SQS). This transport decodes leniently and wraps such an entry in a
proper envelope with no task name, so Celery rejects it like any other unknown message (and the
rejection is recorded with the entry's text), and the worker carries on. Delete the lenient decoding
once kombu hands undecodable entries to `on_decode_error` instead of raising.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from kombu import transport as kombu_transport
from kombu.transport import redis, virtual
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from erdu_tasks.redisconn import SENTINEL_SCHEME, is_sentinel, parse_sentinel

SCHEMES = ("redis", "rediss")
"""URL schemes served by this transport (sentinel:// by its Sentinel twin)."""

FOREIGN_KEY = "erdu_foreign_entry"
"""The key under which an entry that was not JSON is carried to the consumer, as text."""
log = logging.getLogger("erdu.broker")

MAX_FOREIGN_CHARS = 100_000
MAX_ENTRY_BYTES = 2 * 1024 * 1024
"""A queue entry larger than this is not decoded but recorded and skipped (install() may raise it: the
API's own messages stay below twice its request limit)."""

_kombu_loads = redis.loads

_PASSWORDS: dict[tuple[str, int, str | None], str] = {}
"""Broker passwords by (host, port, user), kept in this process instead of in the Celery configuration."""


def _endpoint(host: str | None, port: int | None, user: str | None) -> tuple[str, int, str | None]:
    return ((host or "127.0.0.1").lower(), int(port or 6379), user or None)


def broker_url(url: str) -> tuple[str, dict[str, Any]]:
    """The kombu broker URL and the transport options an ERDU Redis URL needs.

    A sentinel:// URL (erdu_tasks/redisconn.py) becomes kombu's form, one `sentinel://` URL per sentinel, with
    the master's name in the transport option `master_name`; any other URL is kombu's already.
    """
    text = str.__str__(url) if isinstance(url, str) else str(url)
    if not is_sentinel(text):
        return text, {}
    parsed = parse_sentinel(text)
    return parsed.kombu_url(), {"master_name": parsed.master}


def without_password(url: str) -> str:
    """The broker URL without its password, which this transport remembers and adds when it connects.

    The Celery configuration (app.conf: `inspect conf`, Flower, a debug dump) then never holds the password.
    A sentinel URL in kombu's form loses it on every sentinel.
    """
    if is_sentinel(url) and ";" in url:
        return ";".join(without_password(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        password, port = parts.password, parts.port
    except ValueError:
        return url
    if parts.scheme not in (*SCHEMES, SENTINEL_SCHEME) or not password:
        return url
    user = unquote(parts.username) if parts.username else None
    _PASSWORDS[_endpoint(parts.hostname, port, user)] = unquote(password)
    hostport = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username}@{hostport}" if parts.username else hostport
    return urlunsplit(parts._replace(netloc=netloc))


def password_for(host: str | None, port: int | None, user: str | None) -> str | None:
    """The password remembered for this broker endpoint, if any."""
    return _PASSWORDS.get(_endpoint(host, port, user))


def lenient_text(data: Any) -> Any:
    """kombu's bytes-to-text, except that bytes that are not UTF-8 are replaced, not fatal."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data).decode("utf-8", "replace")
    return data


def _head(text: Any, chars: int) -> str:
    raw = text[:chars * 4] if isinstance(text, (bytes, bytearray, str)) else str(text)[:chars]
    return (raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw))[:chars]


def lenient_loads(text: Any) -> Any:
    """kombu's JSON decoding, except that an entry that is not JSON becomes {FOREIGN_KEY: its text}.

    An entry larger than MAX_ENTRY_BYTES is not decoded at all, and one nested too deeply for the JSON
    decoder (which raises RecursionError, not ValueError) is foreign too: neither stops the worker.
    """
    size = len(text) if isinstance(text, (bytes, bytearray, str)) else 0
    if size > MAX_ENTRY_BYTES:
        return {FOREIGN_KEY: f"oversized entry: {size} bytes, more than {MAX_ENTRY_BYTES}; it begins: "
                             + _head(text, 1000)}
    try:
        return _kombu_loads(text)
    except RecursionError:
        return {FOREIGN_KEY: "entry nested too deeply to decode; it begins: " + _head(text, 1000)}
    except ValueError:   # JSONDecodeError, and UnicodeDecodeError of bytes that are not UTF-8
        return {FOREIGN_KEY: _head(text, MAX_FOREIGN_CHARS)}


def is_envelope(raw: Any) -> bool:
    """True if kombu can turn the entry into a message (properties, delivery tag and info, decodable body)."""
    if not isinstance(raw, dict):
        return False
    props = raw.get("properties")
    if not isinstance(props, dict) or "delivery_tag" not in props:
        return False
    info = props.get("delivery_info")
    if not isinstance(info, dict) or "exchange" not in info or "routing_key" not in info:
        return False
    if not isinstance(raw.get("headers", {}), (dict, type(None))):
        return False
    body = raw.get("body")
    if body is not None and not isinstance(body, str):
        return False
    if body and props.get("body_encoding") == "base64":
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return False
    return True


def wrap(raw: Any, queue: str) -> dict[str, Any]:
    """An envelope around a foreign entry: JSON body, no task header, so the consumer rejects it."""
    try:
        body = json.dumps(raw)
    except (ValueError, RecursionError):
        body = json.dumps({FOREIGN_KEY: "an entry that cannot be shown as JSON"})
    if len(body) > MAX_FOREIGN_CHARS:   # cut as text inside valid JSON, so the consumer can still read it
        body = json.dumps({FOREIGN_KEY: f"entry of {len(body)} characters, cut: {body[:MAX_FOREIGN_CHARS // 2]}"})
    return {
        "body": body,
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {},
        "properties": {"delivery_tag": str(uuid.uuid4()), "body_encoding": None,
                       "delivery_info": {"exchange": "", "routing_key": queue}},
    }


class QoS(redis.QoS):
    """kombu's Redis QoS, except that a message popped from a dying broker is still run, and an ack the broker
    never got still frees the consumer's prefetch slot.

    kombu pops a message (BRPOP) and then books it in the unacked hash in a second round trip; when the broker
    dies in between (a master killed, a Sentinel failover), the booking fails and kombu drops the message it
    holds: it is in no queue, in no unacked hash and never run (celery/kombu#305 describes the two steps). Here
    the message is run anyway; it cannot come back after a visibility timeout, but it is not lost. Delete the
    `append` below once kombu pops and books in one step (e.g. BLMOVE into a processing list).

    kombu removes the message from the broker's unacked set first and from its own books second, so an
    ack that fails because the broker just died leaves the message counted as in flight forever. With
    every slot counted, the worker never polls again, never notices the lost connection and never
    reconnects: it stays up and consumes nothing. Here the books are settled either way and the error
    still reaches the caller (Celery logs it); the message stays in the broker's unacked set and comes
    back after the visibility timeout, where the stage's compare-and-set finds it done.
    """

    def append(self, message: Any, delivery_tag: Any) -> None:
        try:
            super().append(message, delivery_tag)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("broker: could not book message %s as unacked (%s); running it anyway", delivery_tag, exc)
            virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        try:
            self._remove_from_indices(delivery_tag).execute()
        finally:
            virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            if requeue:
                self.restore_by_tag(delivery_tag, leftmost=True)
            else:
                self._remove_from_indices(delivery_tag).execute()
        finally:
            virtual.QoS.ack(self, delivery_tag)


class Channel(redis.Channel):
    """kombu's Redis channel, except that using it after its connection is gone is a connection error.

    When the broker vanishes, Celery collects the connection (dropping the transport's client) and
    closes it again; closing hands the unacknowledged messages back, and a task that finishes late acks
    on the old channel. Both build a client from the dropped connection and raise AttributeError,
    which stops the whole worker. As a connection error Celery logs it and reconnects; the messages
    concerned are still in the broker's unacked set and come back after the visibility timeout.
    """

    QoS = QoS
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        """One client per connection pool, not one per command: redis-py builds ~200 callbacks per client.

        kombu makes a new client for every publish, ack and event; the client is thread-safe (it borrows a
        pooled connection per command), so the channel keeps one until its pool is replaced.
        """
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport is None or getattr(transport, "client", None) is None:
            raise RedisConnectionError("this channel's broker connection was closed")
        params = super()._connparams(asynchronous)
        if not params.get("password") and "host" in params:
            remembered = password_for(params.get("host"), params.get("port"), params.get("username"))
            if remembered is not None:
                params["password"] = remembered
        return params


class Transport(redis.Transport):
    """kombu's Redis transport, except that a foreign entry becomes a rejectable message."""

    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        if queue and not is_envelope(message):
            message = wrap(message, queue)
        super()._deliver(message, queue)


class SentinelChannel(Channel, redis.SentinelChannel):
    """kombu's Sentinel channel (it asks the sentinels for the master) with the hardening of Channel above."""


class SentinelTransport(Transport):
    """The transport above for sentinel:// URLs (kombu's form; the master's name in `master_name`)."""

    default_port = 26379
    Channel = SentinelChannel


def install(max_entry_bytes: int | None = None) -> None:
    """Serve redis://, rediss:// and sentinel:// URLs with these transports in this process (URLs and Flower stay
    as they are)."""
    global MAX_ENTRY_BYTES
    if max_entry_bytes is not None:
        MAX_ENTRY_BYTES = max(MAX_ENTRY_BYTES, int(max_entry_bytes))
    # kombu's Redis transport decodes every popped entry with its module-level `loads`.
    redis.loads = lenient_loads
    redis.bytes_to_str = lenient_text
    for scheme, transport in (*((s, "Transport") for s in SCHEMES), (SENTINEL_SCHEME, "SentinelTransport")):
        kombu_transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:{transport}"
        kombu_transport._transport_cache.pop(scheme, None)
