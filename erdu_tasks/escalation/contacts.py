"""Paging people: a level's schedules and people become deliveries to each person's own contacts.

A person is paged through every contact they have, in the order of the people section (Slack user, email,
PagerDuty, webhook), each carried by an escalation channel of the matching type (`oncall.contact_channels`,
else the first channel of that type): a Slack mention of the member in the Slack channel, an email from the
email channel's server to the person's address, a PagerDuty event naming the PagerDuty user, the signed
webhook payload POSTed to the person's own URL with the webhook channel's secret. A delivery to a person
is named `@PERSON/KIND` (no channel name can look like that), so the sweeper's claims, retries, rate
limits and resolve notices treat it like any channel's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from erdu_tasks.escalation.channels import Channel, DeliveryResult, Notification, build_channel
from erdu_tasks.escalation.schedules import CalendarUnreadable, Rota, UnknownSchedule
from erdu_tasks.settings.common import check_http_url
from erdu_tasks.settings.escalation import ChannelSettings, EscalationConfig, LevelConfig
from erdu_tasks.settings.people import Person
from erdu_tasks.settings.schedules import CONTACT_KINDS, OncallConfig

if TYPE_CHECKING:
    import httpx   # imported where a request is made: most processes never make one

_DELIVERY = re.compile(r"^@([a-z0-9][a-z0-9_.-]{0,63})/(slack_user|email|pagerduty|webhook)$")


def delivery_name(person: str, kind: str) -> str:
    """The delivery name of one contact of one person: `@alice/email`."""
    return f"@{person}/{kind}"


def parse_delivery(name: str) -> tuple[str, str] | None:
    """(person, contact kind) of a delivery name, or None for a channel's name."""
    found = _DELIVERY.match(name)
    return (found.group(1), found.group(2)) if found else None


def _contact_value(person: Person, kind: str) -> str | None:
    value = getattr(person.contacts, kind, None)
    if value is None:
        return None
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)


@dataclass(frozen=True)
class Page:
    """One person a level pages: why (which schedule or the level itself), and through which deliveries."""

    person: str
    via: str                                        # "schedule primary" or "person"
    deliveries: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()                   # contacts that no channel can carry, with the reason

    def as_dict(self) -> dict[str, Any]:
        """For a step's payload and the timeline."""
        return {"person": self.person, "via": self.via, "deliveries": list(self.deliveries),
                "skipped": list(self.skipped)}


@dataclass(frozen=True)
class LevelPages:
    """Who a level pages at a moment, and what could not be resolved (a gap in a schedule, a bad calendar)."""

    pages: tuple[Page, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def deliveries(self) -> list[str]:
        """Every delivery name, each once, in order."""
        seen: dict[str, None] = {}
        for page in self.pages:
            seen.update(dict.fromkeys(page.deliveries))
        return list(seen)

    def describe(self) -> str:
        """One line for the timeline: `paging alice (on call on primary) via email, webhook`."""
        parts = []
        for page in self.pages:
            why = f"on call on {page.via.removeprefix('schedule ')}" if page.via.startswith("schedule ") else page.via
            kinds = ", ".join(d.rsplit("/", 1)[1] for d in page.deliveries) or "no usable contact"
            parts.append(f"{page.person} ({why}) via {kinds}")
        return "paging " + "; ".join(parts) if parts else ""


@dataclass
class Pager:
    """Resolves a level's schedules and people into pages, and builds the channel of each person delivery."""

    config: EscalationConfig
    oncall: OncallConfig
    people: Mapping[str, Person]
    rota: Rota
    client: httpx.Client | None = None
    _built: dict[str, Channel] = field(default_factory=dict, repr=False)

    @classmethod
    def from_settings(cls, settings: Any, config: EscalationConfig, client: httpx.Client | None = None) -> Pager:
        """The pager of the settings' people and oncall sections."""
        oncall = OncallConfig.from_section(getattr(settings, "oncall", None))
        people = dict(getattr(settings, "people", None) or {})
        return cls(config, oncall, people, Rota(oncall, people), client)

    def page(self, person: str, via: str) -> Page:
        """The deliveries that page one person, and the contacts no channel carries."""
        found = self.people.get(person)
        if found is None:
            return Page(person, via, (), ("not in the people section",))
        deliveries, skipped = [], []
        for kind in CONTACT_KINDS:
            if _contact_value(found, kind) is None:
                continue
            if self.oncall.contact_channel(kind, self.config.channels) is None:
                skipped.append(f"{kind}: no channel of type {kind.replace('_user', '')} is configured")
                continue
            deliveries.append(delivery_name(person, kind))
        if not deliveries and not skipped:
            skipped.append("no contacts")
        return Page(person, via, tuple(deliveries), tuple(skipped))

    def level_pages(self, level: LevelConfig, at: datetime) -> LevelPages:
        """Whom the level pages at `at`: each of its people, and whoever is on call on each of its schedules."""
        pages: list[Page] = []
        problems: list[str] = []
        for name in level.schedule:
            try:
                current = self.rota.now(name, at)
            except (UnknownSchedule, CalendarUnreadable) as exc:
                problems.append(f"schedule {name}: {exc}")
                continue
            if current.person is None:
                problems.append(f"schedule {name}: nobody is on call at {at.isoformat(timespec='seconds')}")
                continue
            pages.append(self.page(current.person, f"schedule {name}"))
        pages += [self.page(person, "person") for person in level.person]
        unique: dict[str, Page] = {}
        for page in pages:
            unique.setdefault(page.person, page)
        for page in unique.values():
            if not page.deliveries:
                problems.append(f"{page.person} cannot be paged: {'; '.join(page.skipped)}")
        return LevelPages(tuple(unique.values()), tuple(problems))

    def limit_channel(self, name: str) -> str:
        """The channel whose max_per_minute limits a delivery: a person delivery's carrier, else itself."""
        parsed = parse_delivery(name)
        if parsed is None:
            return name
        return self.oncall.contact_channel(parsed[1], self.config.channels) or name

    def channel(self, name: str) -> Channel | None:
        """The channel of a person delivery (`@alice/email`), built once; None for other names."""
        if name in self._built:
            return self._built[name]
        parsed = parse_delivery(name)
        if parsed is None:
            return None
        person_key, kind = parsed
        person = self.people.get(person_key)
        value = _contact_value(person, kind) if person is not None else None
        carrier = self.oncall.contact_channel(kind, self.config.channels)
        if value is None or carrier is None:
            built: Channel = _Refused(name, f"{person_key} has no {kind} contact that a channel can carry now")
        else:
            built = _person_channel(name, person_key, kind, value, self.config.channels[carrier], self.client)
        self._built[name] = built
        return built


def _person_channel(name: str, person: str, kind: str, value: str, carrier: ChannelSettings,
                    client: httpx.Client | None) -> Channel:
    contact = None
    if kind == "email":
        settings = carrier.model_copy(update={"recipients": [value]})
    elif kind == "webhook":
        try:
            check_http_url(value)
        except ValueError as exc:
            return _Refused(name, f"{person}'s webhook contact: {exc}")
        settings = carrier.model_copy(update={"url": value})
    else:   # slack_user, pagerduty: the channel's own destination, naming the person's id there
        settings = carrier
        contact = value
    return _ToPerson(build_channel(name, settings, client), person, contact)


class _ToPerson:
    """A channel whose every message is a page to one person."""

    def __init__(self, inner: Channel, person: str, contact: str | None) -> None:
        self.inner = inner
        self.name = inner.name
        self.settings = getattr(inner, "settings", None)
        self.person = person
        self.contact = contact

    def send(self, notification: Notification) -> DeliveryResult:
        """Send the page."""
        return self.inner.send(notification.for_person(self.person, self.contact))

    def resolve(self, notification: Notification) -> DeliveryResult:
        """Tell the person it is resolved."""
        return self.inner.resolve(notification.for_person(self.person, self.contact))


class _Refused:
    """A person delivery that cannot happen (the contact or its channel is gone): a permanent failure."""

    def __init__(self, name: str, why: str) -> None:
        self.name = name
        self.why = why

    def send(self, notification: Notification) -> DeliveryResult:
        """Fail, saying why."""
        return DeliveryResult.failed(self.name, self.why, permanent=True)

    resolve = send


__all__ = ["LevelPages", "Page", "Pager", "delivery_name", "parse_delivery"]
