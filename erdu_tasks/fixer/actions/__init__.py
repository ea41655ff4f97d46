"""The action registry (name -> action module) and run_step, the one way the fixer runs a step."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from pydantic import BaseModel, ValidationError

from erdu_tasks.errors import PermanentError
from erdu_tasks.fixer.actions import (celery_control, celery_queue, clear_cache, http_call, noop, restart,
                                     run_command, scale)
from erdu_tasks.fixer.actions.base import Action, ActionContext, ActionResult, render_params
from erdu_tasks.fixer.urlguard import DEFAULT_POLICY, UrlPolicy

if TYPE_CHECKING:
    from erdu_tasks.fixer.runbooks import Step

ACTIONS: dict[str, Action] = {
    cast(Action, m).NAME: cast(Action, m) for m in (celery_control, celery_queue, clear_cache, http_call, noop, restart, run_command,
                                                         scale)
}

__all__ = ["ACTIONS", "destroys_state", "needs_approval", "Action", "ActionContext", "ActionResult", "get_action", "prepare_step", "describe_step",
           "run_step"]


def get_action(name: str) -> Action:
    """The action registered under name; PermanentError if there is none."""
    try:
        return ACTIONS[name]
    except KeyError:
        raise PermanentError(f"unknown action {name!r} (known: {', '.join(sorted(ACTIONS))})") from None


def destroys_state(name: str) -> bool:
    """True for an action whose module sets DESTROYS_STATE (a restart, a scale): capture before it runs."""
    return bool(getattr(ACTIONS.get(name), "DESTROYS_STATE", False))


def needs_approval(name: str) -> bool:
    """True for an action whose module sets NEEDS_APPROVAL: a runbook using it asks a person unless it says not to."""
    return bool(getattr(ACTIONS.get(name), "NEEDS_APPROVAL", False))


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'params'}: {e['msg']}" for e in exc.errors())


def prepare_step(step: Step, allowed_fields: Mapping[str, object],
                 url_policy: UrlPolicy = DEFAULT_POLICY) -> tuple[Action, BaseModel]:
    """Render the step's params with the allowed incident fields and validate them.

    Raises PermanentError (unknown action, bad placeholder, unsafe value, a URL host the
    policy refuses, invalid params) before anything runs.
    """
    action = get_action(step.action)
    rendered = render_params(step.params, allowed_fields, policy=url_policy)
    try:
        params = action.Params.model_validate(rendered)
    except ValidationError as exc:
        raise PermanentError(f"invalid params for {step.action}: {_errors(exc)}") from None
    return action, params


def describe_step(step: Step, allowed_fields: Mapping[str, object],
                  url_policy: UrlPolicy = DEFAULT_POLICY) -> str:
    """What the step would do with these fields, or why it would be refused."""
    try:
        action, params = prepare_step(step, allowed_fields, url_policy)
    except PermanentError as exc:
        return f"{step.action}: refused: {exc}"
    return f"{action.NAME}: {action.describe(params)}"


def run_step(step: Step, allowed_fields: Mapping[str, object], *, dry_run: bool = False,
             redis_url_for_cache: str | None = None, idempotency_key: str | None = None,
             url_policy: UrlPolicy = DEFAULT_POLICY) -> ActionResult:
    """Run one step; never raises for a refused or failed action (ok=False with the reason instead).

    A runbook undoes a failed fix with its own `rollback` steps, run forward like any other step.
    """
    started = time.monotonic()
    output: dict[str, Any] = {"action": step.action}
    try:
        action, params = prepare_step(step, allowed_fields, url_policy)
    except PermanentError as exc:
        return ActionResult(False, f"refused: {exc}", time.monotonic() - started, output)
    what = action.describe(params)
    output["what"] = what
    if dry_run:
        return ActionResult(True, f"dry run: would run {step.action}: {what}", 0.0, {**output, "dry_run": True})
    ctx = ActionContext(timeout=step.timeout, redis_url=redis_url_for_cache, idempotency_key=idempotency_key,
                        url_policy=url_policy)
    try:
        result: ActionResult = action.run(params, ctx)
    except Exception as exc:  # an action bug must not kill the fixer: it becomes a failed step
        return ActionResult(False, f"{step.action} raised {type(exc).__name__}: {exc}",
                            time.monotonic() - started, output)
    return ActionResult(result.ok, result.detail, result.duration, {**output, **result.output})
