"""noop: does nothing but say it ran; may be asked to fail, to take time, or to record each run in a file."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

from pydantic import Field

from erdu_tasks.fixer.actions.base import ActionContext, ActionResult, ParamsModel

NAME = "noop"


class Params(ParamsModel):
    """fail: report failure; sleep: seconds to take; record_to: a file that gets one JSON line per run."""

    fail: bool = False
    message: str = ""
    sleep: float = Field(default=0.0, ge=0, le=3600)
    record_to: str | None = None


def describe(params: Params) -> str:
    """What the noop would do."""
    return "noop" + (" (fails)" if params.fail else "") + (f": {params.message}" if params.message else "")


def _record(params: Params, ctx: ActionContext, what: str) -> None:
    if params.record_to:
        line = {"what": what, "key": ctx.idempotency_key, "at": datetime.now(timezone.utc).isoformat()}
        with Path(params.record_to).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")


def run(params: Params, ctx: ActionContext) -> ActionResult:
    """Record the run, sleep if asked (never past the timeout) and succeed unless asked to fail."""
    started = time.monotonic()
    _record(params, ctx, "run")
    if params.sleep:
        time.sleep(min(params.sleep, ctx.timeout))
        if params.sleep > ctx.timeout:
            return ActionResult(False, f"timed out after {ctx.timeout:g}s", time.monotonic() - started, {"ran": True})
    detail = params.message or ("noop failed as asked" if params.fail else "noop ran")
    return ActionResult(not params.fail, detail, time.monotonic() - started, {"ran": True})
