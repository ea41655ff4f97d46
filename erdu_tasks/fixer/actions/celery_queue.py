"""celery_queue: purge a team's Celery queue, or move its messages to another queue, on its Redis broker.

Messages are moved oldest first (kombu's Redis transport pushes on the left and takes from the right),
with LMOVE one at a time, so a crash in between loses none; at most `max_messages`, within the step's
timeout. A purge deletes the queue's lists (every priority level). Needs approval by default.
"""

from __future__ import annotations

import time
from typing import Literal

import redis
from pydantic import Field, model_validator

from erdu_tasks.fixer.actions.base import ActionContext, ActionResult, ParamsModel
from erdu_tasks.fixer.actions.celery_control import QUEUE_NAME, BrokerUrl
from erdu_tasks.fixer.actions.clear_cache import safe_url

NAME = "celery_queue"

NEEDS_APPROVAL = True
"""A runbook using this action requires approval unless it says `approval: none`."""

PRIORITY_SEP = "\x06\x16"


class Params(ParamsModel):
    """broker_url, op (purge or move), queue, and for a move the queue to move to and how many at most."""

    broker_url: BrokerUrl
    op: Literal["purge", "move"]
    queue: str = Field(pattern=QUEUE_NAME)
    to_queue: str | None = Field(default=None, pattern=QUEUE_NAME)
    max_messages: int = Field(default=100_000, ge=1, le=10_000_000)

    @model_validator(mode="after")
    def _target(self) -> "Params":
        if self.op == "move" and (not self.to_queue or self.to_queue == self.queue):
            raise ValueError("move needs to_queue, different from queue")
        if self.op == "purge" and self.to_queue:
            raise ValueError("purge takes no to_queue")
        return self


def describe(params: Params) -> str:
    """What would be purged or moved, on which broker."""
    where = safe_url(params.broker_url)
    if params.op == "purge":
        return f"purge every message of queue {params.queue} on {where}"
    return f"move up to {params.max_messages} message(s) of queue {params.queue} to {params.to_queue} on {where}"


def _lists(queue: str) -> list[str]:
    return [queue] + [f"{queue}{PRIORITY_SEP}{n}" for n in range(1, 10)]


def run(params: Params, ctx: ActionContext) -> ActionResult:
    """Purge or move; a move stopped by the cap or the timeout says how many it moved."""
    started = time.monotonic()
    deadline = started + ctx.timeout
    output: dict[str, object] = {"op": params.op, "queue": params.queue, "broker": safe_url(params.broker_url)}
    moved = 0
    try:
        client = redis.Redis.from_url(params.broker_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            if params.op == "purge":
                with client.pipeline() as pipe:
                    for name in _lists(params.queue):
                        pipe.llen(name)
                    counts = pipe.execute()
                    pipe.delete(*_lists(params.queue))
                    pipe.execute()
                output["purged"] = sum(counts)
                return ActionResult(True, f"purged {sum(counts)} message(s) of {params.queue}",
                                    time.monotonic() - started, output)
            assert params.to_queue is not None
            while moved < params.max_messages and time.monotonic() < deadline:
                if client.lmove(params.queue, params.to_queue, "RIGHT", "LEFT") is None:
                    break
                moved += 1
        finally:
            client.close()
    except redis.RedisError as exc:
        output["moved"] = moved
        return ActionResult(False, f"redis error after moving {moved} message(s): {exc}", time.monotonic() - started,
                            output)
    output.update(moved=moved, to_queue=params.to_queue)
    took = time.monotonic() - started
    if moved >= params.max_messages or time.monotonic() >= deadline:
        return ActionResult(False, f"moved {moved} message(s) to {params.to_queue}, stopped by the "
                            f"{'cap' if moved >= params.max_messages else 'timeout'}; more may wait", took, output)
    return ActionResult(True, f"moved {moved} message(s) of {params.queue} to {params.to_queue}", took, output)
