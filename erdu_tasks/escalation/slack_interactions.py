"""Slack's interaction protocol: request signatures, the block_actions payload, the message update.

Slack POSTs a button click to the app's Interactivity Request URL as `application/x-www-form-urlencoded`
with one field, `payload` (JSON). Each request is signed (https://api.slack.com/authentication/verifying-requests-from-slack):

    X-Slack-Request-Timestamp: 1531420618
    X-Slack-Signature: v0=hex(HMAC-SHA256(signing_secret, "v0:" + timestamp + ":" + raw body))

A request older (or newer) than five minutes is refused, so a captured one cannot be replayed later; the
API also remembers every signature it accepted for that long, so it cannot be replayed sooner either.
The answer to a click is a POST to the interaction's `response_url` (replace_original: the message
updated in place; or an ephemeral reply only the clicking user sees).

Pure functions and one HTTP post; what a click does to an incident is tasks/slack.py.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from erdu_tasks.escalation.channels.base import DeliveryResult, post_json
from erdu_tasks.escalation.channels.slack import ACTED_BLOCK, ACTIONS_BLOCK, SlackAction, escape
from erdu_tasks.model import INCIDENT_ID

if TYPE_CHECKING:
    import httpx   # imported where a request is made: most processes never make one

SIGNATURE_HEADER = "X-Slack-Signature"
TIMESTAMP_HEADER = "X-Slack-Request-Timestamp"
RETRY_HEADER = "X-Slack-Retry-Num"
MAX_AGE_SECONDS = 300
"""A request signed longer ago than this (or this far in the future) is refused."""
_MAX_BLOCKS = 50        # Slack's limit per message
_MEMBER_ID = re.compile(r"[UW][A-Z0-9]{2,32}")


class Verdict(StrEnum):
    """What the signature check found; anything but OK is refused (401)."""

    OK = "ok"
    MISSING = "missing"        # no timestamp or signature header
    MALFORMED = "malformed"    # the timestamp is not Unix seconds
    STALE = "stale"            # signed more than five minutes from now
    FORGED = "forged"          # the signature does not match

    @property
    def reason(self) -> str:
        """The refusal in words."""
        return {
            Verdict.OK: "signature verified",
            Verdict.MISSING: f"{SIGNATURE_HEADER} and {TIMESTAMP_HEADER} are required",
            Verdict.MALFORMED: f"{TIMESTAMP_HEADER} is not Unix seconds",
            Verdict.STALE: f"the request was signed more than {MAX_AGE_SECONDS // 60} minutes from now "
                           "(check the clock, or this is a replay)",
            Verdict.FORGED: "the signature does not match the signing secret (slack.signing_secret)",
        }[self]


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """Slack's v0 signature of a raw body sent at timestamp."""
    base = b"v0:" + timestamp.encode("ascii") + b":" + body
    return "v0=" + hmac.new(secret, base, hashlib.sha256).hexdigest()


def check_request(secret: bytes, timestamp: str | None, signature: str | None, body: bytes, *,
                  now: float) -> Verdict:
    """Whether a request is Slack's, signed within five minutes of now (constant-time comparison)."""
    if not timestamp or not signature:
        return Verdict.MISSING
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        return Verdict.MALFORMED
    good = hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode("utf-8", "replace"))
    if not good:
        return Verdict.FORGED
    if abs(now - int(timestamp)) > MAX_AGE_SECONDS:
        return Verdict.STALE
    return Verdict.OK


class InteractionError(ValueError):
    """A signed request ERDU cannot act on (not a button click of its own); the message says why."""


@dataclass(frozen=True)
class Interaction:
    """One button click, as much of Slack's block_actions payload as ERDU reads."""

    team_id: str
    user_id: str
    action_id: str
    incident_id: str | None
    action_ts: str
    response_url: str
    message_ts: str = ""
    message_text: str = ""
    message_blocks: tuple[dict[str, Any], ...] = ()

    @property
    def action(self) -> SlackAction | None:
        """The ERDU button clicked (None: not one of ERDU's)."""
        try:
            return SlackAction(self.action_id)
        except ValueError:
            return None

    @property
    def key(self) -> str:
        """Names this click: the same click delivered twice (a Slack retry) has the same key."""
        text = "|".join((self.team_id, self.user_id, self.action_id, self.incident_id or "", self.action_ts,
                         self.message_ts))
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def _text(data: Any, *path: str, required: bool = True, limit: int = 200) -> str:
    value = data
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value or len(value) > limit:
        raise InteractionError(f"payload.{'.'.join(path)} is missing or not a short string")
    return value


def check_response_url(url: str, hosts: list[str]) -> str:
    """The response_url if it points at an allowed host (slack.response_hosts) over http(s)."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        raise InteractionError("payload.response_url is not a URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise InteractionError("payload.response_url is not an http(s) URL")
    if host not in hosts:
        raise InteractionError(f"payload.response_url points at {host}, which is not in slack.response_hosts "
                               f"({', '.join(hosts)})")
    return url


def parse_interaction(body: bytes, *, response_hosts: list[str]) -> Interaction:
    """The click in a form-encoded interaction body; InteractionError when it is not an ERDU button click."""
    try:
        text = body.decode("utf-8")
        fields = parse_qs(text, strict_parsing=True, max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        raise InteractionError("the body is not form-encoded UTF-8 (payload=...)") from None
    raw = fields.get("payload")
    if not raw or len(raw) != 1:
        raise InteractionError("the body needs exactly one payload field")
    try:
        data = json.loads(raw[0], parse_constant=lambda name: None)
    except (ValueError, RecursionError):
        raise InteractionError("payload is not JSON") from None
    if not isinstance(data, dict):
        raise InteractionError("payload is not a JSON object")
    if data.get("type") != "block_actions":
        raise InteractionError(f"payload type {str(data.get('type'))[:40]!r} is not handled (only block_actions)")
    actions = data.get("actions")
    if not isinstance(actions, list) or not actions or not isinstance(actions[0], dict):
        raise InteractionError("payload.actions is empty")
    action = actions[0]
    value = action.get("value")
    incident_id = value if isinstance(value, str) and INCIDENT_ID.fullmatch(value) else None
    user_id = _text(data, "user", "id", limit=40)
    if not _MEMBER_ID.fullmatch(user_id):
        raise InteractionError("payload.user.id is not a Slack member id")
    message = data.get("message") if isinstance(data.get("message"), dict) else {}
    blocks = message.get("blocks") if isinstance(message.get("blocks"), list) else []
    return Interaction(
        team_id=_text(data, "team", "id", required=False, limit=40),
        user_id=user_id,
        action_id=_text(action, "action_id", limit=255),
        incident_id=incident_id,
        action_ts=_text(action, "action_ts", required=False, limit=40),
        response_url=check_response_url(_text(data, "response_url", limit=2000), response_hosts),
        message_ts=_text(message, "ts", required=False, limit=40),
        message_text=_text(message, "text", required=False, limit=4000),
        message_blocks=tuple(b for b in blocks[:_MAX_BLOCKS] if isinstance(b, dict)),
    )


def _with_status(block: dict[str, Any], status: str) -> dict[str, Any]:
    fields = block.get("fields")
    if block.get("type") != "section" or not isinstance(fields, list):
        return block
    new = [{**f, "text": f"*Status*\n{escape(status)}"}
           if isinstance(f, dict) and str(f.get("text", "")).startswith("*Status*\n") else f for f in fields]
    return {**block, "fields": new}


def updated_message(interaction: Interaction, line: str, buttons: dict[str, Any] | None,
                    status: str | None = None) -> dict[str, Any]:
    """The clicked message with a line saying who did what where its buttons were, the buttons that still
    apply, and its Status field saying status (the response_url body that replaces the original)."""
    blocks = list(interaction.message_blocks)
    if status:
        blocks = [_with_status(b, status) for b in blocks]
    at = next((n for n, b in enumerate(blocks) if b.get("block_id") == ACTIONS_BLOCK), len(blocks))
    blocks = [b for b in blocks if b.get("block_id") != ACTIONS_BLOCK]
    acted = sum(str(b.get("block_id", "")).startswith(ACTED_BLOCK) for b in blocks)
    insert: list[dict[str, Any]] = [{"type": "context", "block_id": f"{ACTED_BLOCK}.{acted + 1}",
                                     "elements": [{"type": "mrkdwn", "text": line[:2000]}]}]
    if buttons:
        insert.append(buttons)
    blocks[at:at] = insert
    return {"replace_original": True, "text": interaction.message_text or line, "blocks": blocks[:_MAX_BLOCKS]}


def ephemeral(text: str) -> dict[str, Any]:
    """A reply only the clicking user sees; the message stays as it was."""
    return {"response_type": "ephemeral", "replace_original": False, "text": text[:3000]}


def post_response(url: str, body: dict[str, Any], *, timeout: float = 5.0,
                  client: httpx.Client | None = None) -> DeliveryResult:
    """POST an answer to an interaction's response_url (checked by parse_interaction)."""
    return post_json("slack-response", url, json.dumps(body, ensure_ascii=False).encode(), timeout=timeout,
                     client=client)


__all__ = ["Interaction", "InteractionError", "MAX_AGE_SECONDS", "RETRY_HEADER", "SIGNATURE_HEADER",
           "TIMESTAMP_HEADER", "Verdict", "check_request", "check_response_url", "ephemeral", "parse_interaction",
           "post_response", "sign", "updated_message"]
