"""Slack-style incoming webhook: readable text plus Block Kit blocks.

Event text is escaped (`&`, `<`, `>`) so a log line can never ping `@channel` or forge a link.
Texts are cut to Slack's limits (header 150, section 3000 characters).
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from erdu_tasks.escalation.channels.base import BaseChannel, DeliveryResult, Notification, NotificationKind, post_json
from erdu_tasks.settings.escalation import SlackSettings

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


def slack_payload(n: Notification) -> dict[str, Any]:
    """The incoming-webhook body for a notification."""
    if n.kind is NotificationKind.RESOLVE:
        head = f"✅ Resolved: {n.severity} · {n.title}"
    elif n.kind is NotificationKind.DIGEST:
        head = f"📨 {n.title}"
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
        _section(f"*Why*\n{escape(n.reason)}"),
    ]
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
    see = f"See it: `{_code(n.see_command)}`"
    if n.url:
        see += f" · <{escape(n.url)}|open in ERDU>"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _limit(see, _FIELD_MAX)}]})
    return {"text": escape(n.summary()), "blocks": blocks}


class SlackChannel(BaseChannel):
    """Posts to a Slack (or compatible) incoming webhook."""

    def __init__(self, name: str, settings: SlackSettings, *, client: httpx.Client | None = None) -> None:
        super().__init__(name, settings)
        self.url = settings.url.get_secret_value()
        self._client = client

    def _deliver(self, notification: Notification) -> DeliveryResult:
        body = json.dumps(slack_payload(notification), ensure_ascii=False).encode()
        return post_json(self.name, self.url, body, timeout=self.settings.timeout, client=self._client)
