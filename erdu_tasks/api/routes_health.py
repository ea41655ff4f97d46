"""GET /healthz: can this API reach Redis and Postgres right now?"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from erdu_tasks.errors import ErduError
from erdu_tasks.api.context import ApiContext, context

router = APIRouter(tags=["health"])


class Health(BaseModel):
    """ok, or which dependency failed and why."""

    status: str
    redis: str
    postgres: str


def _check(fn) -> str:
    try:
        fn()
        return "ok"
    except ErduError as exc:
        return str(exc)


@router.get("/healthz", response_model=Health, responses={503: {"model": Health, "description": "Degraded"}})
def healthz(ctx: Annotated[ApiContext, Depends(context)]):
    """200 when Redis and Postgres both answer, 503 otherwise (no token needed)."""

    def postgres() -> None:
        with ctx.rt.db.transaction() as conn:
            conn.execute("SELECT 1")

    health = Health(status="ok", redis=_check(ctx.require_broker), postgres=_check(postgres))
    if health.redis != "ok" or health.postgres != "ok":
        health.status = "unavailable"
        return JSONResponse(health.model_dump(), status_code=503)
    return health
