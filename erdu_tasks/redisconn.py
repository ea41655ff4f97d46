"""Redis clients from one kind of URL: redis://, rediss://, unix:// or sentinel:// (Redis Sentinel).

Every Redis client ERDU makes (monitor state, locks and rate counters, beat's lock, the API's broker ping,
the metrics, the cache that clear_cache runbooks act on) is built by `redis_client`, so a Sentinel URL works
wherever a Redis URL does. A Sentinel URL names the sentinels, the master's name and the database:

    sentinel://[user:password@]host1:26379;host2:26379;host3:26379/mymaster/0

Each sentinel may also be written as kombu writes it (`sentinel://h1:26379;sentinel://h2:26379/mymaster/0`);
the password is the master's. The client asks the sentinels for the current master on every new
connection, so after a failover it reaches the promoted replica by itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

SENTINEL_SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379
EXAMPLE = "sentinel://host1:26379;host2:26379/mymaster/0"


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed sentinel:// URL."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def kombu_url(self, *, with_password: bool = True) -> str:
        """The URL in kombu's form: each sentinel its own `sentinel://` URL with the credentials and database (kombu
        moves to the next one when it reconnects); the master's name goes in the transport option `master_name`."""
        userinfo = ""
        if self.username or (self.password and with_password):
            userinfo = self.username or ""
            if self.password and with_password:
                userinfo += ":" + self.password
            userinfo += "@"
        urls = [f"{SENTINEL_SCHEME}://{userinfo}{_hostport(host, port)}/{self.db}" for host, port in self.sentinels]
        return ";".join(urls)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_sentinel(url: str) -> bool:
    """True for a sentinel:// URL."""
    return str(url).lower().startswith(SENTINEL_SCHEME + "://")


def parse_sentinel(url: str) -> SentinelUrl:
    """The sentinels, master name, database and credentials of a sentinel:// URL; ValueError saying what is wrong."""
    text = str(url)
    if not is_sentinel(text):
        raise ValueError(f"not a sentinel:// URL (e.g. {EXAMPLE})")
    if any(c.isspace() for c in text) or "?" in text or "#" in text:
        raise ValueError(f"a sentinel URL holds no spaces, query or fragment (e.g. {EXAMPLE})")
    parts = text[len(SENTINEL_SCHEME) + 3:].split(";")
    sentinels: list[tuple[str, int]] = []
    path = ""
    username = password = None
    for i, part in enumerate(parts):
        if part.lower().startswith(SENTINEL_SCHEME + "://"):
            part = part[len(SENTINEL_SCHEME) + 3:]
        hostport, slash, rest = part.partition("/")
        if slash:
            if path and rest != path:
                raise ValueError("the sentinels of one URL name one master and database: "
                                 f"'/{path}' and '/{rest}' differ")
            path = rest
        if "@" in hostport:
            if i != 0:
                raise ValueError("credentials go on the first sentinel only (sentinel://user:password@h1;h2/...)")
            userinfo, _, hostport = hostport.rpartition("@")
            user, colon, secret = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if colon else None
        sentinels.append(_sentinel_address(hostport))
    segments = [s for s in path.split("/") if s] if path else []
    if not segments:
        raise ValueError(f"a sentinel URL names the master after the sentinels: {EXAMPLE}")
    master, *more = segments
    if master.isdigit():
        raise ValueError(f"the master's name comes first, then the database number: {EXAMPLE}")
    db = 0
    if more:
        if len(more) > 1 or not more[0].isdigit() or int(more[0]) > 1_000_000:
            raise ValueError(f"after the master's name only a database number may follow: {EXAMPLE}")
        db = int(more[0])
    return SentinelUrl(tuple(sentinels), unquote(master), db, username, password)


def _sentinel_address(hostport: str) -> tuple[str, int]:
    if not hostport:
        raise ValueError(f"an empty sentinel address (two ';' in a row, or none given): {EXAMPLE}")
    if hostport.startswith("["):
        host, bracket, rest = hostport[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad sentinel address {hostport!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = hostport.partition(":")
    if not host or any(c in host for c in "@/[]%"):
        raise ValueError(f"bad sentinel host in {hostport!r}")
    if not port_text:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad sentinel port in {hostport!r}")
    return host, int(port_text)


def redis_client(url: str, **options: Any) -> Any:
    """A redis.Redis for any ERDU Redis URL (sentinel:// included); options are redis-py connection options."""
    import redis

    text = str.__str__(url) if isinstance(url, str) else str(url)
    if not is_sentinel(text):
        return redis.Redis.from_url(text, **options)
    from redis.sentinel import Sentinel

    parsed = parse_sentinel(text)
    timeouts = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout") if k in options}
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=timeouts or None, **timeouts)
    return sentinel.master_for(parsed.master, db=parsed.db, username=parsed.username, password=parsed.password,
                               **options)
