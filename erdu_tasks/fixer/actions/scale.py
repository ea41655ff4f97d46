"""scale: an argv template such as `docker compose up -d --scale {service}=3`, with an optional undo argv."""

from __future__ import annotations

from pydantic import Field

from erdu_tasks.fixer.actions import run_command
from erdu_tasks.fixer.actions.base import ActionContext, ActionResult, build_env, command_line, run_argv

NAME = "scale"


class Params(run_command.Params):
    """run_command's params plus `rollback_argv`, run by rollback() to scale back."""

    rollback_argv: list[str] | None = Field(default=None, min_length=1)


def describe(params: Params) -> str:
    """The scaling command line that would run."""
    return command_line(params.argv)


def run(params: Params, ctx: ActionContext) -> ActionResult:
    """Run the scaling argv."""
    return run_command.run(params, ctx)


def rollback(params: Params, ctx: ActionContext) -> ActionResult:
    """Run `rollback_argv` if the runbook gave one."""
    if not params.rollback_argv:
        return ActionResult(True, "nothing to undo: no rollback_argv given", 0.0)
    return run_argv(params.rollback_argv, timeout=ctx.timeout, cwd=params.cwd,
                    env=build_env(params.env_passthrough, params.env), expect_exit=params.expect_exit)
