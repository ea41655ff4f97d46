"""Slack interactivity: the Request URL Slack POSTs button clicks to (the Slack app's Interactivity setting).

No bearer token (Slack cannot send one): the request's Slack signature is its authentication. A request
is refused (401) unless it is signed with slack.signing_secret within five minutes of now and was not
received before; the click is then handled by tasks/slack.py. Slack expects an answer within three seconds;
what the click did is shown on the message itself (its response_url), so the HTTP answer is a short JSON.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from erdu_tasks import names
from erdu_tasks.escalation.channels.slack import SlackAction
from erdu_tasks.escalation.slack_interactions import (
    MAX_AGE_SECONDS,
    RETRY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    InteractionError,
    Verdict,
    check_request,
    parse_interaction,
)
from erdu_tasks.tasks.slack import handle_click
from erdu_tasks.api.context import ApiContext, context, log

INTERACTIONS_PATH = "/v1/slack/interactions"
router = APIRouter(tags=["slack"])
Ctx = Annotated[ApiContext, Depends(context)]
SEEN_TTL_SECONDS = 2 * MAX_AGE_SECONDS + 60
"""A signature is remembered longer than any timestamp it could carry stays acceptable."""


class SlackAnswer(BaseModel):
    """What the click did; Slack shows the outcome on the message (or as an ephemeral reply)."""

    ok: bool
    message: str
    person: str | None = None


_FORM = {"requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
    "type": "object", "required": ["payload"],
    "properties": {"payload": {"type": "string", "description": "Slack's block_actions payload (JSON)"}}}}}}}


@router.post(INTERACTIONS_PATH, response_model=SlackAnswer, openapi_extra=_FORM, responses={
    400: {"description": "Signed, but not a click of an ERDU button; nothing changed"},
    401: {"description": "Not signed with slack.signing_secret, signed more than 5 minutes ago, or a replay"},
    404: {"description": "Slack interactivity is off (no slack.signing_secret)"},
})
async def interactions(request: Request, ctx: Ctx) -> SlackAnswer:
    """A Slack button click (Acknowledge, Resolve, Silence 1 h), signed by Slack, acted on by its person."""
    slack = ctx.rt.settings.slack
    if slack.signing_secret is None:
        raise HTTPException(404, "Slack interactivity is off: set slack.signing_secret (ERDU_SLACK__SIGNING_SECRET)")
    body = await request.body()
    signature = request.headers.get(SIGNATURE_HEADER)
    verdict = check_request(slack.signing_secret.get_secret_value().encode(), request.headers.get(TIMESTAMP_HEADER),
                            signature, body, now=time.time())
    if verdict is not Verdict.OK:
        log.warning("slack request refused", verdict=verdict.value, client=request.client and request.client.host)
        raise HTTPException(401, verdict.reason)
    assert signature is not None
    seen = names.SLACK_SEEN_PREFIX + signature.removeprefix("v0=")
    if not await run_in_threadpool(ctx.broker.set, seen, "1", nx=True, ex=SEEN_TTL_SECONDS):
        if request.headers.get(RETRY_HEADER):   # Slack re-sent what was already handled: nothing more to do
            return SlackAnswer(ok=True, message="already handled")
        log.warning("slack request refused", verdict="replay", client=request.client and request.client.host)
        raise HTTPException(401, "this signed request was already received (a replay); nothing was done")
    try:
        click = parse_interaction(body, response_hosts=slack.response_hosts)
    except InteractionError as exc:
        raise HTTPException(400, str(exc)) from None
    try:
        if click.action is SlackAction.RESOLVE:
            ctx.require_broker()   # the resolver is handed the incident
        outcome = await run_in_threadpool(handle_click, ctx.rt, ctx.broker, click)
    except BaseException:
        await run_in_threadpool(ctx.broker.delete, seen)   # not handled: Slack's retry may be
        raise
    return SlackAnswer(ok=outcome.ok, message=outcome.message, person=outcome.person)
