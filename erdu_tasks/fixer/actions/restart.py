"""restart: a systemd unit, a supervisor program, a docker container, or an argv from the runbook."""

from __future__ import annotations

from pydantic import Field, model_validator

from erdu_tasks.fixer.actions.base import ActionContext, ActionResult, ParamsModel, build_env, command_line, run_argv

NAME = "restart"

DESTROYS_STATE = True
"""True: a restart kills the running process: its state is captured first (fixer/capture.py)."""

_TARGETS = ("systemd", "supervisor", "docker", "argv")


class Params(ParamsModel):
    """Exactly one of systemd (unit), supervisor (program), docker (container) or argv."""

    systemd: str | None = Field(default=None, min_length=1)
    supervisor: str | None = Field(default=None, min_length=1)
    docker: str | None = Field(default=None, min_length=1)
    argv: list[str] | None = Field(default=None, min_length=1)
    supervisor_conf: str | None = None

    @model_validator(mode="after")
    def _exactly_one_target(self) -> "Params":
        given = [t for t in _TARGETS if getattr(self, t) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(_TARGETS)} (got {', '.join(given) or 'none'})")
        for name in ("systemd", "supervisor", "docker"):
            value = getattr(self, name)
            if value is not None and value.startswith("-"):
                raise ValueError(f"{name} name must not start with '-'")
        if self.supervisor_conf is not None and self.supervisor is None:
            raise ValueError("supervisor_conf only goes with supervisor")
        return self


def build_argv(params: Params) -> list[str]:
    """The argv that restarts the target."""
    if params.systemd is not None:
        return ["systemctl", "--no-ask-password", "restart", params.systemd]
    if params.supervisor is not None:
        conf = ["-c", params.supervisor_conf] if params.supervisor_conf else []
        return ["supervisorctl", *conf, "restart", params.supervisor]
    if params.docker is not None:
        return ["docker", "restart", params.docker]
    assert params.argv is not None
    return list(params.argv)


def describe(params: Params) -> str:
    """The restart command line that would run."""
    return command_line(build_argv(params))


def run(params: Params, ctx: ActionContext) -> ActionResult:
    """Restart the target and report the command's outcome."""
    return run_argv(build_argv(params), timeout=ctx.timeout, env=build_env())
