"""Failed stage tasks: list them (kept in Postgres) and re-drive their incidents, as `erdu failed ls|retry` does."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from erdu_tasks.tasks import people
from erdu_tasks.store import failed
from erdu_tasks.api.auth import require_read, require_write
from erdu_tasks.api.context import ApiContext, context

router = APIRouter(tags=["failed tasks"])
Ctx = Annotated[ApiContext, Depends(context)]


class FailedTask(BaseModel):
    """A stage task that failed for good: which incident, which stage, the error, when, and if retried."""

    id: int
    task_id: str
    task_name: str
    stage: str | None
    incident_id: str | None
    error: str
    worker: str | None
    failed_at: datetime
    retried_at: datetime | None


class FailedTaskList(BaseModel):
    """Newest first."""

    failed_tasks: list[FailedTask]


class RetryBody(BaseModel):
    """One incident, or every incident with an unretried failure."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    incident_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,100}$")
    all: bool = False
    by: str = Field(default="api", min_length=1, max_length=128, description="The person acting")

    @model_validator(mode="after")
    def _one_target(self) -> "RetryBody":
        if bool(self.incident_id) == self.all:
            raise ValueError("give either incident_id or all: true")
        return self


class RetryOutcome(BaseModel):
    """What happened to one incident."""

    incident_id: str
    retried: bool
    message: str


class RetryResult(BaseModel):
    """One line per incident."""

    results: list[RetryOutcome]


@router.get("/v1/failed-tasks", response_model=FailedTaskList, dependencies=[Depends(require_read)])
def list_failed(
    ctx: Ctx,
    include_retried: Annotated[bool, Query(description="Also those already retried")] = False,
    incident_id: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> FailedTaskList:
    """Stage tasks that failed for good, newest first."""
    where, params = [], []
    if not include_retried:
        where.append(failed.OPEN)
    if incident_id:
        where.append("incident_id = %s")
        params.append(incident_id)
    sql = ("SELECT id, task_id, task_name, stage, incident_id, error, worker, failed_at, retried_at FROM failed_tasks"
           + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT %s")
    with ctx.rt.db.transaction() as conn:
        rows = conn.execute(sql, (*params, limit)).fetchall()
    return FailedTaskList(failed_tasks=[FailedTask(**r) for r in rows])


@router.post("/v1/failed-tasks/retry", response_model=RetryResult, dependencies=[Depends(require_write)],
             responses={404: {"description": "No such incident"}})
def retry_failed(ctx: Ctx, body: Annotated[RetryBody, Body()]) -> RetryResult:
    """Re-drive incidents from the stage that failed (idempotent: an incident that moved on is skipped)."""
    ctx.require_broker()
    with ctx.rt.db.transaction() as conn:
        if body.all:
            ids = [r["incident_id"] for r in conn.execute(
                f"SELECT DISTINCT incident_id FROM failed_tasks WHERE {failed.OPEN} AND incident_id IS NOT NULL"
                " ORDER BY incident_id").fetchall()]
        else:
            if conn.execute("SELECT 1 FROM incidents WHERE id = %s", (body.incident_id,)).fetchone() is None:
                raise HTTPException(404, f"no incident {body.incident_id}")
            ids = [body.incident_id]
    results: list[dict[str, Any]] = []
    for incident_id in ids:
        try:
            done = people.retry(ctx.rt, incident_id, body.by)
            results.append({"incident_id": incident_id, "retried": True, "message": done.message})
        except people.ActionRefused as exc:
            results.append({"incident_id": incident_id, "retried": False, "message": str(exc)})
    return RetryResult(results=[RetryOutcome(**r) for r in results])
