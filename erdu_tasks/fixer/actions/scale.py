"""scale: an argv template such as `docker compose up -d --scale {service}=3` (scale back in `rollback` steps)."""

from __future__ import annotations

from erdu_tasks.fixer.actions import run_command
from erdu_tasks.fixer.actions.base import ActionContext, ActionResult, command_line

NAME = "scale"

DESTROYS_STATE = True
"""True: scaling in stops processes: the service's state is captured first (fixer/capture.py)."""


class Params(run_command.Params):
    """run_command's params: the scaling argv and how to run it."""


def describe(params: Params) -> str:
    """The scaling command line that would run."""
    return command_line(params.argv)


def run(params: Params, ctx: ActionContext) -> ActionResult:
    """Run the scaling argv."""
    return run_command.run(params, ctx)
