"""PagerDuty Events API v2: trigger with dedup_key = incident id, resolve when ERDU resolves; an FYI (a P1 closed
without a repair) is a change event, which PagerDuty records without paging.

Repeated triggers for the same incident carry the same dedup_key, so PagerDuty folds them
into one alert (its own escalation policy then takes over). A 4xx answer is permanent
(bad routing key or payload); 429 and 5xx are worth retrying.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from erdu_tasks.escalation.channels.base import BaseChannel, DeliveryResult, Notification, NotificationKind, post_json
from erdu_tasks.settings.escalation import PAGERDUTY_EVENTS_URL, PagerDutySettings

if TYPE_CHECKING:
    import httpx   # imported where a request is made: most processes never make one

EVENTS_URL = PAGERDUTY_EVENTS_URL
_SEVERITY = {"P1": "critical", "P2": "error", "P3": "warning", "P4": "info", "P5": "info"}
_SUMMARY_MAX = 1024


def trigger_body(n: Notification, routing_key: str, source: str | None = None) -> dict[str, Any]:
    """The Events v2 trigger for a notification."""
    details: dict[str, Any] = {
        "incident_id": n.incident_id,
        "status": n.status,
        "reason": n.reason,
        "level": n.level,
        "repeat": n.repeat,
        "affected_services": list(n.affected_services),
        "root_cause": n.root_cause,
        "attempted_fixes": [{"action": f.action, "ok": f.ok, "output": f.output} for f in n.attempted_fixes],
        "occurrences": n.occurrences,
        "see": n.see_command,
    }
    if n.message:
        details["first_occurrence"] = {"message": n.message, "host": n.host, "labels": dict(n.labels),
                                       "traceback": list(n.traceback)}
    if n.url:
        details["url"] = n.url
    if n.paged_person:
        details["paged_person"] = n.paged_person
        if n.paged_contact:
            details["pagerduty_user"] = n.paged_contact
    if n.held_count:
        details["held"] = n.held_count
        details["sample_incidents"] = list(n.held_incidents)
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": n.incident_id,
        "client": "ERDU",
        "payload": {
            "summary": n.summary()[:_SUMMARY_MAX],
            "source": source or n.host or n.service or "erdu",
            "severity": _SEVERITY.get(n.severity, "error"),
            "component": n.service,
            "group": ", ".join(n.affected_services) or None,
            "class": n.kind.value,
            "custom_details": details,
        },
    }
    body["payload"] = {k: v for k, v in body["payload"].items() if v is not None}
    if n.url:
        body["client_url"] = n.url
        body["links"] = [{"href": n.url, "text": f"ERDU {n.incident_id}"}]
    return body


def resolve_body(n: Notification, routing_key: str) -> dict[str, Any]:
    """The Events v2 resolve for an incident."""
    return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": n.incident_id}


def change_body(n: Notification, routing_key: str, source: str | None = None) -> dict[str, Any]:
    """An FYI as an Events v2 change event: recorded on the service's timeline in PagerDuty, never a page."""
    return {"routing_key": routing_key,
            "payload": {"summary": n.summary()[:_SUMMARY_MAX], "source": source or n.service or "erdu",
                        "custom_details": {"incident_id": n.incident_id, "reason": n.reason,
                                           "root_cause": n.root_cause, "see": n.see_command}}}


def change_url(events_url: str) -> str:
    """The change-events endpoint beside the configured events endpoint (`…/v2/enqueue` -> `…/v2/change/enqueue`)."""
    head, sep, _ = events_url.rpartition("/v2/enqueue")
    return f"{head}/v2/change/enqueue" if sep else events_url


class PagerDutyChannel(BaseChannel):
    """Sends Events v2 triggers and resolves."""

    def __init__(self, name: str, settings: PagerDutySettings, *, client: httpx.Client | None = None) -> None:
        super().__init__(name, settings)
        self.events_url = settings.events_url
        self._key = settings.routing_key.get_secret_value()
        self._source = settings.source
        self._client = client

    def _deliver(self, notification: Notification) -> DeliveryResult:
        if notification.kind is NotificationKind.REMINDER:   # a reminder is not an alert: it would open one
            return DeliveryResult.sent(self.name, "PagerDuty gets no silence reminders (it would open an alert)")
        url = self.events_url
        if notification.kind is NotificationKind.RESOLVE:
            body = resolve_body(notification, self._key)
        elif notification.kind is NotificationKind.FYI:
            body, url = change_body(notification, self._key, self._source), change_url(self.events_url)
        else:
            body = trigger_body(notification, self._key, self._source)
        raw = json.dumps(body, ensure_ascii=False).encode()
        return post_json(self.name, url, raw, timeout=self.settings.timeout, client=self._client)
