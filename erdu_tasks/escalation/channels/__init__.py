"""Notification channels, found by their type name, and the one place that builds them from config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from erdu_tasks.escalation.channels.base import (
    AttemptedFix,
    Channel,
    ChannelSettings,
    DeliveryResult,
    Notification,
    NotificationKind,
)
from erdu_tasks.escalation.channels.email import EmailChannel, EmailSettings
from erdu_tasks.escalation.channels.file import FileChannel, FileSettings
from erdu_tasks.escalation.channels.pagerduty import PagerDutyChannel, PagerDutySettings
from erdu_tasks.escalation.channels.slack import SlackChannel, SlackSettings
from erdu_tasks.escalation.channels.webhook import WebhookChannel, WebhookSettings
from erdu_tasks.settings.escalation import AnyChannelSettings

if TYPE_CHECKING:
    import httpx   # imported where a request is made: most processes never make one

CHANNEL_TYPES: dict[str, tuple[type[ChannelSettings], Any]] = {
    "file": (FileSettings, FileChannel),
    "webhook": (WebhookSettings, WebhookChannel),
    "slack": (SlackSettings, SlackChannel),
    "pagerduty": (PagerDutySettings, PagerDutyChannel),
    "email": (EmailSettings, EmailChannel),
}
"""Type name -> (settings model, channel class)."""

class _HasChannels(Protocol):
    channels: Mapping[str, ChannelSettings]


_HTTP_TYPES = frozenset({"webhook", "slack", "pagerduty"})


def build_channel(name: str, settings: ChannelSettings, client: httpx.Client | None = None) -> Channel:
    """One channel from its validated settings; an HTTP channel uses `client` (a shared pool) when given."""
    try:
        _, cls = CHANNEL_TYPES[settings.type]
    except KeyError:
        raise ValueError(f"unknown channel type {settings.type!r}") from None
    if client is not None and settings.type in _HTTP_TYPES:
        return cls(name, settings, client=client)
    return cls(name, settings)


def build_channels(config: _HasChannels | Mapping[str, ChannelSettings],
                   client: httpx.Client | None = None) -> dict[str, Channel]:
    """Every configured channel by name (an EscalationConfig or name -> settings); HTTP ones share `client`."""
    channels = config if isinstance(config, Mapping) else config.channels
    return {name: build_channel(name, settings, client) for name, settings in channels.items()}


__all__ = [
    "AnyChannelSettings",
    "AttemptedFix",
    "CHANNEL_TYPES",
    "Channel",
    "ChannelSettings",
    "DeliveryResult",
    "Notification",
    "NotificationKind",
    "build_channel",
    "build_channels",
]
