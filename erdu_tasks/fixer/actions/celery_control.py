"""celery_control: a remote-control command to a team's Celery workers (pool restart, autoscale, consumers).

The command is broadcast on the app's broker through kombu's pidbox (what `celery control` sends: the
`celery` mailbox, JSON) to the named workers, or to all of them only when the runbook says `all_workers`;
the step is ok when every addressed worker replied without an error. Only the commands below are sent —
never shutdown, revoke or rate changes. Needs approval by default (a runbook without `approval:` that uses
it requires a person's yes). `pool_restart` works only on workers started with `worker_pool_restarts`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from kombu import Connection
from kombu.pidbox import Mailbox
from pydantic import AfterValidator, Field, model_validator

from erdu_tasks.fixer.actions.base import ActionContext, ActionResult, ParamsModel
from erdu_tasks.fixer.actions.clear_cache import safe_url

NAME = "celery_control"

NEEDS_APPROVAL = True
"""A runbook using this action requires approval unless it says `approval: none`."""

DESTROYS_STATE = True
"""A pool restart or shrink ends the tasks running in it: the service's state is captured first."""

Command = Literal["pool_restart", "autoscale", "pool_grow", "pool_shrink", "add_consumer", "cancel_consumer"]

QUEUE_NAME = r"^[A-Za-z0-9_.:@-]{1,200}$"
"""What a Celery queue named in a runbook may be called (this action's and celery_queue's)."""


def _redis_url(url: str) -> str:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("broker_url must be a Redis URL")
    return url


BrokerUrl = Annotated[str, AfterValidator(_redis_url)]
"""A Celery app's broker, which these actions reach: Redis only."""


class Params(ParamsModel):
    """broker_url of the app, the command, whom to send it to, and the command's own arguments."""

    broker_url: BrokerUrl
    command: Command
    destination: list[str] = Field(default_factory=list, max_length=100)
    all_workers: bool = False
    queue: str | None = Field(default=None, pattern=QUEUE_NAME)
    n: int = Field(default=1, ge=1, le=1000)
    max: int | None = Field(default=None, ge=1, le=10_000)
    min: int | None = Field(default=None, ge=0, le=10_000)
    reply_timeout: float = Field(default=5.0, gt=0, le=120)
    mailbox: str = Field(default="celery", pattern=r"^[A-Za-z0-9_.-]{1,100}$")

    @model_validator(mode="after")
    def _consistent(self) -> "Params":
        if bool(self.destination) == self.all_workers:
            raise ValueError("give the workers in destination, or all_workers: true (not both)")
        if self.command in ("add_consumer", "cancel_consumer") and not self.queue:
            raise ValueError(f"{self.command} needs a queue")
        if self.command == "autoscale" and (self.max is None or self.min is None or self.min > self.max):
            raise ValueError("autoscale needs max and min (min <= max)")
        return self

    def arguments(self) -> dict[str, Any]:
        """The command's arguments as Celery's control expects them."""
        if self.command == "pool_restart":
            return {"modules": None, "reload": False, "reloader": None}
        if self.command == "autoscale":
            return {"max": self.max, "min": self.min}
        if self.command in ("pool_grow", "pool_shrink"):
            return {"n": self.n}
        if self.command == "add_consumer":
            return {"queue": self.queue}
        return {"queue": self.queue}


def describe(params: Params) -> str:
    """Which command, with which arguments, to which workers of which broker."""
    who = "every worker" if params.all_workers else ", ".join(params.destination)
    args = ", ".join(f"{k}={v}" for k, v in params.arguments().items() if v is not None)
    return f"celery {params.command}({args}) to {who} on {safe_url(params.broker_url)}"


def broadcast(params: Params) -> list[dict[str, Any]]:
    """Send the command and collect the replies ({worker: reply} each)."""
    with Connection(params.broker_url, connect_timeout=params.reply_timeout) as conn:
        box = Mailbox(params.mailbox, type="fanout", accept=["json"], serializer="json")(conn)
        replies = box._broadcast(params.command, params.arguments(), destination=params.destination or None,
                                 reply=True, timeout=params.reply_timeout)
    return list(replies or [])


def run(params: Params, ctx: ActionContext) -> ActionResult:
    """Broadcast the command; ok when every addressed worker replied and none replied an error."""
    started = time.monotonic()
    output: dict[str, Any] = {"command": params.command, "broker": safe_url(params.broker_url)}
    try:
        replies = broadcast(params)
    except Exception as exc:   # kombu and redis raise many connection error types
        return ActionResult(False, f"could not reach the broker: {type(exc).__name__}: {exc}",
                            time.monotonic() - started, output)
    flat: dict[str, Any] = {}
    for reply in replies:
        if isinstance(reply, dict):
            flat.update({str(k)[:255]: v for k, v in reply.items()})
    output["replies"] = {k: (v if isinstance(v, dict) else str(v)[:500]) for k, v in list(flat.items())[:100]}
    errors = {k: v.get("error") for k, v in flat.items() if isinstance(v, dict) and v.get("error")}
    missing = [d for d in params.destination if d not in flat]
    took = time.monotonic() - started
    if not flat:
        return ActionResult(False, f"no worker replied to {params.command} within {params.reply_timeout:g} s", took,
                            output)
    if errors or missing:
        parts = [f"{k}: {str(v)[:200]}" for k, v in errors.items()] + [f"{m}: no reply" for m in missing]
        return ActionResult(False, f"{params.command} failed on " + "; ".join(parts), took, output)
    return ActionResult(True, f"{params.command} done by {', '.join(sorted(flat))}", took, output)
