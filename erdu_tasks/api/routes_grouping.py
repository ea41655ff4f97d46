"""Grouping over HTTP: why an incident has its key, and the merges and splits people teach (`erdu grouping`)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field

from erdu_tasks.ingest import grouping
from erdu_tasks.api.auth import require_read, require_write
from erdu_tasks.api.context import ApiContext, context

router = APIRouter(tags=["grouping"])
Ctx = Annotated[ApiContext, Depends(context)]
IncidentId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,100}$", description="e.g. INC-20240101120000-1a2b3c4d")]
Ref = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$",
            description="a fingerprint, or the id of an incident whose fingerprint it is")


class MergeBody(BaseModel):
    """`source` is `target`: its new events go to target, and what was learned about it follows."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    source: str = Ref
    target: str = Ref
    by: str = Field(default="api", min_length=1, max_length=128)
    note: str | None = Field(default=None, max_length=2000)


class SplitBody(BaseModel):
    """The value at <*> number `slot` (1 = the first) of the fingerprint's template matters."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    fingerprint: str = Ref
    slot: int = Field(ge=1, le=1000)
    by: str = Field(default="api", min_length=1, max_length=128)
    note: str | None = Field(default=None, max_length=2000)


class Taught(BaseModel):
    """What the change did, in one line."""

    message: str


def _teach(ctx: ApiContext, do) -> Taught:
    try:
        with ctx.rt.db.transaction() as conn:
            return Taught(message=do(conn))
    except grouping.GroupingRefused as exc:
        raise HTTPException(409 if "already" in str(exc) else 422, str(exc)) from None


@router.get("/v1/incidents/{incident_id}/why", dependencies=[Depends(require_read)],
            responses={404: {"description": "No such incident"}})
def why(incident_id: IncidentId, ctx: Ctx) -> dict[str, Any]:
    """Why the incident has its key: the step, the template, the values masked and by which rule, the overrides."""
    with ctx.rt.db.transaction() as conn:
        found = grouping.why(conn, incident_id)
    if found is None:
        raise HTTPException(404, f"no incident {incident_id}")
    return found


@router.get("/v1/grouping", dependencies=[Depends(require_read)])
def overrides(ctx: Ctx) -> list[dict[str, Any]]:
    """The merges and splits in force, oldest first."""
    with ctx.rt.db.transaction() as conn:
        return grouping.listing(conn)


@router.post("/v1/grouping/merge", response_model=Taught, dependencies=[Depends(require_write)],
             responses={409: {"description": "Already one group"}, 422: {"description": "Unknown fingerprint"}})
def merge(body: MergeBody, ctx: Ctx) -> Taught:
    """Merge two fingerprints: applied to new events at once; learned fix statistics follow."""
    return _teach(ctx, lambda conn: grouping.merge(conn, body.source, body.target, body.by, body.note))


@router.post("/v1/grouping/split", response_model=Taught, dependencies=[Depends(require_write)],
             responses={409: {"description": "That value already counts"}, 422: {"description": "No such slot"}})
def split(body: SplitBody, ctx: Ctx) -> Taught:
    """Split a fingerprint by the value at one <*> of its template."""
    return _teach(ctx, lambda conn: grouping.split(conn, body.fingerprint, body.slot, body.by, body.note))


@router.delete("/v1/grouping/{override_id}", response_model=Taught, dependencies=[Depends(require_write)],
               responses={422: {"description": "No such override"}})
def remove(override_id: Annotated[int, Path(ge=1)], ctx: Ctx) -> Taught:
    """Remove an override."""
    return _teach(ctx, lambda conn: grouping.remove(conn, override_id))
