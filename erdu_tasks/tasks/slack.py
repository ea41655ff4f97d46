"""What a Slack button click does: who clicked (people.*.contacts.slack_user), whether they may, the action
through tasks/people.py, and the message updated in place to say who did it.

The click is verified before it gets here (api/routes_slack.py). Each click is handled once: its key is
claimed in Redis first, so Slack delivering it again (a retry, X-Slack-Retry-Num) does nothing; and the
actions themselves are idempotent, so a second click on Acknowledge records nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import redis
import structlog

from erdu_tasks import names
from erdu_tasks.escalation.channels.slack import SILENCE_FOR, SlackAction, action_block, escape
from erdu_tasks.escalation.slack_interactions import Interaction, ephemeral, post_response, updated_message
from erdu_tasks.model import OPEN_STATUSES, Status
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings.people import Person, PersonRole
from erdu_tasks.store import incidents as store
from erdu_tasks.tasks import people

log = structlog.get_logger("erdu.slack")

CLICK_TTL_SECONDS = 86_400
"""How long a handled click is remembered (Slack retries within minutes)."""

NEEDED_ROLE: dict[SlackAction, PersonRole] = {
    SlackAction.ACK: PersonRole.responder,
    SlackAction.RESOLVE: PersonRole.responder,
    SlackAction.SILENCE: PersonRole.admin,
}
"""The role each button needs (settings/people.py: responders act on incidents, admins also silence)."""

_VERB = {SlackAction.ACK: "acknowledge", SlackAction.RESOLVE: "resolve", SlackAction.SILENCE: "silence"}
_DONE = {SlackAction.ACK: "✅ *Acknowledged*", SlackAction.RESOLVE: "☑️ *Resolved*", SlackAction.SILENCE: "🔕 *Silenced*"}


@dataclass(frozen=True)
class ClickOutcome:
    """What a click did, in one line (the API's answer to Slack, and a log field)."""

    ok: bool
    message: str
    person: str | None = None
    changed: bool = False


def person_for(people_section: Mapping[str, Person], slack_user: str) -> tuple[str, Person] | None:
    """The ERDU person whose contacts.slack_user is this Slack member id (None: nobody)."""
    for key, person in people_section.items():
        if person.contacts.slack_user == slack_user:
            return key, person
    return None


def _refuse(click: Interaction, text: str, person: str | None = None, *, ok: bool = False) -> ClickOutcome:
    sent = post_response(click.response_url, ephemeral(text))
    if not sent.ok:
        log.warning("slack reply failed", detail=sent.detail)
    return ClickOutcome(ok, text, person)


def _run(rt: Runtime, action: SlackAction, incident_id: str, who: str) -> people.ActionDone:
    if action is SlackAction.SILENCE:
        return people.silence_service(rt, incident_id, who, SILENCE_FOR)
    return people.act(rt, "ack" if action is SlackAction.ACK else "resolve", incident_id, who)


def handle_click(rt: Runtime, claims: redis.Redis, click: Interaction) -> ClickOutcome:
    """Act on one verified click and answer it on its response_url (updated message or ephemeral reply)."""
    action = click.action
    if action is None or action is SlackAction.OPEN:
        return ClickOutcome(True, "nothing to do: the button only opens a link")
    if click.incident_id is None:
        return _refuse(click, "This button names no ERDU incident; nothing was done.")
    found = person_for(rt.settings.people, click.user_id)
    if found is None:
        return _refuse(click, f"Your Slack account ({click.user_id}) is not an ERDU person, so nothing was done. "
                              f"An ERDU admin can map it: people.<name>.contacts.slack_user: {click.user_id}")
    who, person = found
    needed = NEEDED_ROLE[action]
    if not person.role.allows(needed):
        return _refuse(click, f"{who} is a {person.role.value} in ERDU; to {_VERB[action]} an incident needs the "
                              f"{needed.value} role. Nothing was done.", who)
    claim = names.SLACK_CLICK_PREFIX + click.key
    if not claims.set(claim, who, nx=True, ex=CLICK_TTL_SECONDS):
        log.info("slack click already handled", incident_id=click.incident_id, action=action.value, person=who)
        return ClickOutcome(True, "already handled", who)
    try:
        done = _run(rt, action, click.incident_id, who)
    except people.ActionRefused as exc:
        return _refuse(click, f"Nothing was done: {exc}.", who)
    except BaseException:
        claims.delete(claim)   # not handled: a retry of this click may act
        raise
    if not done.changed:
        return _refuse(click, f"Nothing more to do: {done.message}.", who, ok=True)
    _update_message(rt, click, action, who, person, done)
    log.info("slack click", incident_id=click.incident_id, action=action.value, person=who)
    return ClickOutcome(True, done.message, who, changed=True)


def _update_message(rt: Runtime, click: Interaction, action: SlackAction, who: str, person: Person,
                    done: people.ActionDone) -> None:
    assert click.incident_id is not None
    with rt.db.transaction() as conn:
        incident = store.get_incident(conn, click.incident_id)
    status = incident.status if incident else Status.CLOSED
    buttons = action_block(click.incident_id, console_url=rt.settings.escalation.url_for(click.incident_id),
                           acknowledged=bool(incident and incident.acknowledged_at),
                           is_open=status in OPEN_STATUSES)
    name = f"{escape(person.display_name)} (`{who}`)" if person.display_name else f"`{who}`"
    at = datetime.now(timezone.utc)
    line = f"{_DONE[action]} by {name} at {at:%H:%M} UTC"
    if action is SlackAction.SILENCE:
        line += f" · {escape(done.message)}"
    sent = post_response(click.response_url, updated_message(click, line, buttons, status.value))
    if not sent.ok:
        log.warning("slack message update failed", incident_id=click.incident_id, detail=sent.detail)


__all__ = ["ClickOutcome", "NEEDED_ROLE", "handle_click", "person_for"]
