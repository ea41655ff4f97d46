"""run_command: an argv list from the runbook, run without a shell, with a timeout and captured output."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator

from erdu_tasks.fixer.actions.base import ActionContext, ActionResult, ParamsModel, as_int_list, build_env, command_line, run_argv

NAME = "run_command"

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Params(ParamsModel):
    """argv (no shell), extra env values, env variables to pass through, cwd, accepted exit codes."""

    argv: list[str] = Field(min_length=1)
    env: dict[Annotated[str, Field(pattern=_ENV_NAME)], str] = Field(default_factory=dict)
    env_passthrough: list[Annotated[str, Field(pattern=_ENV_NAME)]] = Field(default_factory=list)
    cwd: str | None = None
    expect_exit: Annotated[list[int], BeforeValidator(as_int_list)] = Field(default_factory=lambda: [0])

    @field_validator("argv")
    @classmethod
    def _program_named(cls, argv: list[str]) -> list[str]:
        if not argv[0].strip():
            raise ValueError("argv[0] (the program) must not be empty")
        return argv


def describe(params: Params) -> str:
    """The command line that would run."""
    return command_line(params.argv)


def run(params: Params, ctx: ActionContext) -> ActionResult:
    """Run the argv and report its exit code and capped output."""
    return run_argv(params.argv, timeout=ctx.timeout, cwd=params.cwd,
                    env=build_env(params.env_passthrough, params.env), expect_exit=params.expect_exit)
