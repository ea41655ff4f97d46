"""GET /healthz: can this API reach Redis and Postgres right now? GET /livez: is this process serving at all?

/healthz is for readiness (take the API out of a load balancer while Redis or Postgres is away); /livez
asks nothing of either, so a liveness probe on it never restarts every API at once when they blip.
"""

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


class Alive(BaseModel):
    """The process answers HTTP."""

    status: str = "alive"


@router.get("/livez", response_model=Alive)
def livez() -> Alive:
    """200 while the process serves requests; touches neither Redis nor Postgres (no token needed)."""
    return Alive()
