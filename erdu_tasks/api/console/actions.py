"""What people do from the console: ack, resolve, approve, retry, silence, retry or dismiss a failed task.

Each action checks the role and the CSRF token (web.py), then calls the code the CLI and the API call
(tasks/people.py, escalation/silences.py, store/failed.py) with the signed-in person's key as who.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from erdu_tasks.errors import TransientError
from erdu_tasks.escalation import silences
from erdu_tasks.escalation.policy import parse_duration
from erdu_tasks.settings.people import PersonRole
from erdu_tasks.store import failed
from erdu_tasks.tasks import people
from erdu_tasks.api.console.web import SECURITY_HEADERS, Refused, back, console_of, form, may, signed_in

router = APIRouter(include_in_schema=False)

_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
ACTIONS = {"ack": "acknowledge", "resolve": "resolve", "approve": "approve", "retry": "retry"}
MAX_NOTE = 4000


def _note(fields: dict[str, str]) -> str | None:
    note = (fields.get("note") or "").strip()
    if len(note) > MAX_NOTE:
        raise Refused(400, f"the note is longer than {MAX_NOTE} characters")
    return note or None


@router.post("/incidents/{incident_id}/{action}")
async def incident_action(request: Request, incident_id: str, action: str) -> Response:
    """ack | resolve | approve | retry, by the signed-in responder, with an optional note."""
    person = signed_in(request)
    if action not in ACTIONS or not _ID.match(incident_id):
        raise Refused(404, "no such action")
    may(person, PersonRole.responder, f"to {ACTIONS[action]} an incident")
    fields = await form(request, person)
    note = _note(fields)
    ctx = console_of(request).ctx
    page = f"/incidents/{incident_id}"
    try:
        if action in ("resolve", "approve", "retry"):
            ctx.require_broker()   # these hand the incident on: refuse before changing anything
        done = people.act(ctx.rt, action, incident_id, person.key, note)
    except (people.ActionRefused, TransientError) as exc:
        return back(page, error=str(exc))
    return back(page, message=done.message)


def _matchers(text: str) -> tuple[silences.Matcher, ...]:
    lines = [line.strip() for line in re.split(r"[\n,]", text or "") if line.strip()]
    return silences.parse_matchers(lines)


@router.get("/silences/preview")
def silence_preview(request: Request, matchers: str = "") -> Response:
    """How many open incidents these matchers match now (the silences' own matching code)."""
    signed_in(request)
    try:
        parsed = _matchers(matchers)
    except silences.SilenceError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400, headers=SECURITY_HEADERS)
    with console_of(request).ctx.rt.db.transaction() as conn:
        found = silences.preview(conn, parsed)
    return JSONResponse({"matched": found.matched, "examined": found.examined, "capped": found.capped,
                         "sample": list(found.sample), "matchers": [str(m) for m in parsed]},
                        headers=SECURITY_HEADERS)


@router.post("/silences")
async def add_silence(request: Request) -> Response:
    """A new silence (admins): matchers one per line, a duration (e.g. 2h) and a comment."""
    person = signed_in(request)
    may(person, PersonRole.admin, "to add a silence")
    fields = await form(request, person)
    back_to = fields.get("back") or "/silences"
    now = datetime.now(timezone.utc)
    config = console_of(request).ctx.rt.settings.escalation
    try:
        matchers = _matchers(fields.get("matchers", ""))
        comment = (fields.get("comment") or "").strip()
        if not comment:
            raise silences.SilenceError("say why in the comment (it is shown to whoever the silence hides)")
        try:
            ends = now + parse_duration((fields.get("duration") or "").strip() or "1h")
        except ValueError as exc:
            raise silences.SilenceError(f"duration: {exc}") from None
        with console_of(request).ctx.rt.db.transaction() as conn:
            created = silences.add_silence(conn, matchers, starts_at=now, ends_at=ends, author=person.key,
                                           comment=comment[:2000], now=now, intervals=config.time_intervals,
                                           max_duration=config.silences.max_duration)
    except silences.SilenceError as exc:
        return back(back_to, error=str(exc))
    return back(back_to, message=f"silence {created.id} added by {person.key} until "
                                 f"{created.ends_at:%Y-%m-%d %H:%M}Z: {created.describe()}")


@router.post("/silences/{silence_id}/expire")
async def expire_silence(request: Request, silence_id: str) -> Response:
    """End a silence now (admins)."""
    person = signed_in(request)
    may(person, PersonRole.admin, "to end a silence")
    await form(request, person)
    try:
        with console_of(request).ctx.rt.db.transaction() as conn:
            silences.expire_silence(conn, silence_id[:40], who=person.key, now=datetime.now(timezone.utc))
    except silences.SilenceError as exc:
        return back("/silences", error=str(exc))
    return back("/silences", message=f"{silence_id} ended by {person.key}")


def _failed_task(request: Request, failed_id: str) -> dict:
    if not failed_id.isdigit() or len(failed_id) > 18:
        raise Refused(404, "not a failed task number")
    with console_of(request).ctx.rt.db.transaction() as conn:
        row = failed.get(conn, int(failed_id))
    if row is None:
        raise Refused(404, f"no failed task #{failed_id}")
    return row


@router.post("/failed/{failed_id}/retry")
async def retry_failed(request: Request, failed_id: str) -> Response:
    """Re-drive the failed task's incident from the stage that failed (responders)."""
    person = signed_in(request)
    may(person, PersonRole.responder, "to retry a failed task")
    await form(request, person)
    row = _failed_task(request, failed_id)
    if not row["incident_id"]:
        return back("/failed", error=f"failed task #{failed_id} belongs to no incident: nothing to re-drive; "
                                     "dismiss it instead")
    ctx = console_of(request).ctx
    try:
        ctx.require_broker()
        done = people.retry(ctx.rt, row["incident_id"], person.key)
    except (people.ActionRefused, TransientError) as exc:
        return back("/failed", error=str(exc))
    return back("/failed", message=f"#{failed_id}: {done.message} by {person.key}")


@router.post("/failed/{failed_id}/dismiss")
async def dismiss_failed(request: Request, failed_id: str) -> Response:
    """Take a failed task nobody will retry off the open list (responders), with a note."""
    person = signed_in(request)
    may(person, PersonRole.responder, "to dismiss a failed task")
    fields = await form(request, person)
    _failed_task(request, failed_id)
    with console_of(request).ctx.rt.db.transaction() as conn:
        row = failed.dismiss(conn, int(failed_id), person.key, _note(fields))
    if row is None:
        return back("/failed", error=f"failed task #{failed_id} is not open (already retried or dismissed)")
    return back("/failed", message=f"#{failed_id} dismissed by {person.key}")
