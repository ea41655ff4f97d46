"""clear_cache: delete Redis keys matching a pattern with SCAN + UNLINK/DEL in batches (never KEYS)."""

from __future__ import annotations

import time

import redis
from pydantic import Field, field_validator

from erdu_tasks.fixer.actions.base import ActionContext, ActionResult, ParamsModel
from erdu_tasks.redisconn import is_sentinel, parse_sentinel, redis_client
from erdu_tasks.settings.common import mask_url

NAME = "clear_cache"

_GLOB = set("*?[]\\")


class Params(ParamsModel):
    """pattern (a Redis glob), redis_url (else the configured one), batch size, a cap, UNLINK or DEL."""

    pattern: str
    redis_url: str | None = None
    batch: int = Field(default=500, ge=1, le=10_000)
    max_keys: int = Field(default=1_000_000, ge=1)
    unlink: bool = True

    @field_validator("redis_url")
    @classmethod
    def _sentinel_url_parses(cls, url: str | None) -> str | None:
        if url is not None and is_sentinel(url):
            parse_sentinel(url)   # a runbook naming a bad sentinel URL fails when it loads, saying why
        return url

    @field_validator("pattern")
    @classmethod
    def _not_everything(cls, pattern: str) -> str:
        literal = [c for c in pattern if c not in _GLOB and c not in "{}"]
        if len(literal) < 3:
            raise ValueError(f"pattern {pattern!r} is too broad: it needs at least 3 literal characters")
        return pattern


def safe_url(url: str) -> str:
    """The URL without its password, for details and logs (sentinel:// URLs included)."""
    return mask_url(url)


def describe(params: Params) -> str:
    """Which keys on which Redis."""
    where = safe_url(params.redis_url) if params.redis_url else "the configured cache Redis"
    return f"delete keys matching {params.pattern!r} on {where}"


def run(params: Params, ctx: ActionContext) -> ActionResult:
    """SCAN for matching keys and delete them batch by batch; stop at the timeout or max_keys."""
    url = params.redis_url or ctx.redis_url
    started = time.monotonic()
    if not url:
        return ActionResult(False, "no Redis URL: give redis_url in the runbook or configure one", 0.0)
    deadline = started + ctx.timeout
    deleted = seen = 0
    output = {"pattern": params.pattern, "redis": safe_url(url)}
    sock_timeout = max(0.5, min(ctx.timeout, 10.0))
    try:
        client = redis_client(url, socket_timeout=sock_timeout, socket_connect_timeout=sock_timeout)
        try:
            remove = client.unlink if params.unlink else client.delete
            batch: list[bytes] = []
            for key in client.scan_iter(match=params.pattern, count=params.batch):
                batch.append(key)
                seen += 1
                if len(batch) >= params.batch or seen >= params.max_keys:
                    deleted += remove(*batch)
                    batch.clear()
                if seen >= params.max_keys:
                    output.update(deleted=deleted)
                    return ActionResult(False, f"stopped at max_keys={params.max_keys} after deleting {deleted} keys; "
                                        "more may match", time.monotonic() - started, output)
                if time.monotonic() > deadline:
                    if batch:
                        deleted += remove(*batch)
                    output.update(deleted=deleted)
                    return ActionResult(False, f"timed out after {ctx.timeout:g}s having deleted {deleted} keys",
                                        time.monotonic() - started, output)
            if batch:
                deleted += remove(*batch)
        finally:
            client.close()
    except redis.RedisError as exc:
        output.update(deleted=deleted)
        return ActionResult(False, f"redis error after deleting {deleted} keys: {exc}", time.monotonic() - started,
                            output)
    output.update(deleted=deleted)
    return ActionResult(True, f"deleted {deleted} keys matching {params.pattern!r}", time.monotonic() - started,
                        output)
