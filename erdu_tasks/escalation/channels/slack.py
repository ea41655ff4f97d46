"""Slack-style incoming webhook: readable text plus Block Kit blocks, with action buttons.

Event text is escaped (`&`, `<`, `>`) so a log line can never ping `@channel` or forge a link.
Texts are cut to Slack's limits (header 150, section 3000 characters).

A new incident's message carries buttons (Acknowledge, Resolve, Silence 1 h, Open in console) in the
block `erdu.actions`; each button's value is the incident id. What a click does is in
escalation/slack_interactions.py (the protocol) and tasks/slack.py (the action).
"""

from __future__ import annotations

import json
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from erdu_tasks.escalation.channels.base import BaseChannel, DeliveryResult, Notification, NotificationKind, post_json
from erdu_tasks.settings.escalation import SlackSettings

if TYPE_CHECKING:
    import httpx   # imported where a request is made: most processes never make one

_HEADER_MAX = 150
_SECTION_MAX = 3000
_FIELD_MAX = 2000
_ICON = {"P1": "🔴", "P2": "🟠", "P3": "🟡", "P4": "🔵", "P5": "⚪"}


def escape(text: str) -> str:
    """Escape text for Slack mrkdwn so it is shown, never interpreted as a mention or link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    return escape(text).replace("```", "'''")


def _limit(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _limit(text, _SECTION_MAX)}}


ACTIONS_BLOCK = "erdu.actions"
"""The block_id of the buttons (replaced when the message is updated)."""
ACTED_BLOCK = "erdu.acted"
"""The block_id prefix of the lines saying who did what from Slack."""


class SlackAction(StrEnum):
    """The action_id of each button."""

    ACK = "erdu.ack"
    RESOLVE = "erdu.resolve"
    SILENCE = "erdu.silence"
    OPEN = "erdu.open"


SILENCE_FOR = timedelta(hours=1)
"""What "Silence 1 h" silences the incident's service for (never beyond escalation.silences.max_duration)."""


def _button(action: SlackAction, text: str, incident_id: str, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {"type": "button", "action_id": action.value, "value": incident_id,
                              "text": {"type": "plain_text", "text": text, "emoji": True}}
    if style:
        button["style"] = style
    return button


def action_block(incident_id: str, *, console_url: str | None, acknowledged: bool = False,
                 is_open: bool = True) -> dict[str, Any] | None:
    """The buttons for an incident in this state (an open incident: ack unless acknowledged, resolve,
    silence; any incident: open in console); None when no button applies."""
    elements: list[dict[str, Any]] = []
    if is_open:
        if not acknowledged:
            elements.append(_button(SlackAction.ACK, "Acknowledge", incident_id, "primary"))
        elements.append(_button(SlackAction.RESOLVE, "Resolve", incident_id))
        silence = _button(SlackAction.SILENCE, "Silence 1 h", incident_id)
        silence["confirm"] = {
            "title": {"type": "plain_text", "text": "Silence the service?"},
            "text": {"type": "plain_text", "text": "Its incidents notify nobody and run no fix for an hour."},
            "confirm": {"type": "plain_text", "text": "Silence"},
            "deny": {"type": "plain_text", "text": "Cancel"},
        }
        elements.append(silence)
    if console_url:
        elements.append({"type": "button", "action_id": SlackAction.OPEN.value, "url": console_url[:3000],
                         "text": {"type": "plain_text", "text": "Open in console", "emoji": True}})
    return {"type": "actions", "block_id": ACTIONS_BLOCK, "elements": elements} if elements else None


def slack_payload(n: Notification) -> dict[str, Any]:
    """The incoming-webhook body for a notification."""
    if n.kind is NotificationKind.RESOLVE:
        head = f"✅ Resolved: {n.severity} · {n.title}"
    elif n.kind is NotificationKind.DIGEST:
        head = f"📨 {n.title}"
    elif n.kind is NotificationKind.REMINDER:
        head = f"⏰ {n.title}"
    elif n.kind is NotificationKind.FYI:
        head = f"ℹ️ FYI, closed without a repair: {n.severity} · {n.title}"
    else:
        head = f"{_ICON.get(n.severity, '⚠️')} {n.severity} · {n.title}"
    fields = [
        f"*Incident*\n`{_code(n.incident_id)}`",
        f"*Status*\n{escape(n.status)}",
    ]
    if n.kind is not NotificationKind.DIGEST:
        fields.append(f"*Level*\n{n.level}" + (f" (repeat {n.repeat})" if n.repeat else ""))
        services = ", ".join(n.affected_services) or n.service or "unknown"
        fields.append(f"*Services*\n{escape(services)}")
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _limit(head, _HEADER_MAX), "emoji": True}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": _limit(f, _FIELD_MAX)} for f in fields]},
    ]
    if n.message:
        first = f"*First occurrence*{' on ' + escape(n.host) if n.host else ''}\n```{_code(n.message)}"
        first += "".join(f"\n{_code(line)}" for line in n.traceback) + "```"
        blocks.append(_section(first))
    if n.labels:
        blocks.append(_section("*Labels* " + ", ".join(f"`{_code(k)}={_code(v)}`" for k, v in n.labels.items())))
    blocks.append(_section(f"*Why*\n{escape(n.reason)}"))
    if n.root_cause:
        blocks.append(_section(f"*Root-cause hypothesis*\n{escape(n.root_cause)}"))
    if n.attempted_fixes:
        lines = []
        for fix in n.attempted_fixes:
            mark = {True: "✓", False: "✗", None: "?"}[fix.ok]
            line = f"• {mark} `{_code(fix.action)}`"
            if fix.output:
                line += f"\n```{_code(_limit(fix.output, 600))}```"
            lines.append(line)
        blocks.append(_section("*Attempted fixes*\n" + "\n".join(lines)))
    if n.held_incidents:
        blocks.append(_section("*Some of the held incidents*\n" + ", ".join(f"`{_code(i)}`" for i in n.held_incidents)))
    if n.kind is NotificationKind.TRIGGER:
        buttons = action_block(n.incident_id, console_url=n.url,
                               acknowledged=n.status == "acknowledged")
        if buttons:
            blocks.append(buttons)
    see = f"See it: `{_code(n.see_command)}`"
    if n.url:
        see += f" · <{escape(n.url)}|open in ERDU>"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _limit(see, _FIELD_MAX)}]})
    text = escape(n.summary())
    if n.paged_contact:     # a member id (validated by the people section): Slack notifies that person
        mention = f"<@{n.paged_contact}>"
        text = f"{mention} {text}"
        blocks.insert(1, _section(f"{mention} you are paged (on call as {escape(n.paged_person or '?')})"))
    return {"text": text, "blocks": blocks}


class SlackChannel(BaseChannel):
    """Posts to a Slack (or compatible) incoming webhook."""

    def __init__(self, name: str, settings: SlackSettings, *, client: httpx.Client | None = None) -> None:
        super().__init__(name, settings)
        self.url = settings.url.get_secret_value()
        self._client = client

    def _deliver(self, notification: Notification) -> DeliveryResult:
        body = json.dumps(slack_payload(notification), ensure_ascii=False).encode()
        return post_json(self.name, self.url, body, timeout=self.settings.timeout, client=self._client)
