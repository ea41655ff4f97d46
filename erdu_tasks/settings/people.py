"""The `people` section: who may act on incidents, with what rights, and how each is reached.

    people:
      alice:
        display_name: Alice Martin
        role: responder              # viewer (reads), responder (acts on incidents), admin (also silences, settings)
        token: s3cret-alice          # her sign-in token for the console and the API (a secret; optional)
        time_zone: Europe/Paris      # shown in schedules; schedules carry their own zone
        contacts:                    # how she is paged, tried in this order
          slack_user: U024BE7LH      # Slack member id (also maps Slack interactions to her)
          email: alice@example.com
          pagerduty: PABC123         # a PagerDuty user id
          webhook: https://hooks.example.com/alice
      bob: {role: admin, contacts: {email: bob@example.com}}

A person's key (`alice`) is the name recorded on every action they take ("alice acknowledged"). Schedules,
escalation levels and Slack interactions refer to people by this key only.
"""

from __future__ import annotations

import re
from enum import Enum
from pydantic import Field, SecretStr, field_validator

from erdu_tasks.settings.common import Section

PERSON_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
"""What a person's key may be: lower case letters, digits, '_', '.', '-' (at most 64)."""


class PersonRole(str, Enum):
    """What a person may do: each role includes the ones before it."""

    viewer = "viewer"
    responder = "responder"
    admin = "admin"

    def allows(self, needed: "PersonRole") -> bool:
        order = list(PersonRole)
        return order.index(self) >= order.index(needed)


class Contacts(Section):
    """The ways a person is reached, tried in the order listed here."""

    slack_user: str | None = Field(default=None, pattern=r"^[UW][A-Z0-9]{2,20}$")
    email: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$", max_length=254)
    pagerduty: str | None = Field(default=None, max_length=64)
    webhook: SecretStr | None = None


class Person(Section):
    """One person: their role, their sign-in token and their contacts."""

    display_name: str | None = Field(default=None, max_length=128)
    role: PersonRole = PersonRole.responder
    token: SecretStr | None = None
    time_zone: str | None = None
    contacts: Contacts = Field(default_factory=Contacts)


People = dict[str, Person]
"""The `people` section's type: person key -> Person."""


def check_people(value: dict[str, Person]) -> dict[str, Person]:
    """Refuse person keys that could not be recorded plainly on a timeline."""
    bad = sorted(name for name in value if not PERSON_NAME.match(name))
    if bad:
        raise ValueError(f"invalid person name(s) {', '.join(map(repr, bad))}: use lower case letters, digits, "
                         "'_', '.' or '-' (at most 64 characters)")
    # A Slack click acts as the person its member id maps to: one id, one person.
    owners: dict[str, list[str]] = {}
    for name, person in value.items():
        if person.contacts.slack_user:
            owners.setdefault(person.contacts.slack_user, []).append(name)
    shared = {user: names for user, names in owners.items() if len(names) > 1}
    if shared:
        user, names = sorted(shared.items())[0]
        raise ValueError(f"people {', '.join(names)} share contacts.slack_user {user}: a Slack member id maps to "
                         "one person")
    return value


__all__ = ["Contacts", "People", "Person", "PersonRole", "PERSON_NAME", "check_people"]
