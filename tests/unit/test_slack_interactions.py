"""Slack's interaction protocol as pure functions: the v0 signature, the five-minute window, the payload."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from erdu_tasks.escalation.channels.slack import action_block
from erdu_tasks.escalation.slack_interactions import (
    InteractionError,
    Verdict,
    check_request,
    parse_interaction,
    sign,
    updated_message,
)

# The worked example of https://api.slack.com/authentication/verifying-requests-from-slack
DOC_SECRET = b"8f742231b10e8888abcd99yyyzzz85a5"
DOC_TS = "1531420618"
DOC_BODY = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
            b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
            b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
            b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
DOC_SIG = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
T = int(DOC_TS)
IID = "INC-20250303120000-abcd1234"


def test_the_signature_is_slacks_own_worked_example():
    assert sign(DOC_SECRET, DOC_TS, DOC_BODY) == DOC_SIG


@pytest.mark.parametrize(("secret", "ts", "sig", "body", "now", "verdict"), [
    (DOC_SECRET, DOC_TS, DOC_SIG, DOC_BODY, T + 299, Verdict.OK),
    (DOC_SECRET, DOC_TS, DOC_SIG, DOC_BODY, T - 299, Verdict.OK),
    (DOC_SECRET, DOC_TS, DOC_SIG, DOC_BODY, T + 301, Verdict.STALE),
    (DOC_SECRET, DOC_TS, DOC_SIG, DOC_BODY, T - 301, Verdict.STALE),     # signed in the future
    (b"another-secret", DOC_TS, DOC_SIG, DOC_BODY, T, Verdict.FORGED),
    (DOC_SECRET, DOC_TS, DOC_SIG, DOC_BODY + b"&x=1", T, Verdict.FORGED),
    (DOC_SECRET, str(T + 1), DOC_SIG, DOC_BODY, T, Verdict.FORGED),     # the timestamp is signed too
    (DOC_SECRET, DOC_TS, DOC_SIG.upper(), DOC_BODY, T, Verdict.FORGED),
    (DOC_SECRET, DOC_TS, "v0=ü", DOC_BODY, T, Verdict.FORGED),
    (DOC_SECRET, None, DOC_SIG, DOC_BODY, T, Verdict.MISSING),
    (DOC_SECRET, DOC_TS, "", DOC_BODY, T, Verdict.MISSING),
    (DOC_SECRET, "1531420618.5", DOC_SIG, DOC_BODY, T, Verdict.MALFORMED),
    (DOC_SECRET, "١٥٣١٤٢٠٦١٨", DOC_SIG, DOC_BODY, T, Verdict.MALFORMED),   # digits, but not ASCII ones
    (DOC_SECRET, "9" * 40, DOC_SIG, DOC_BODY, T, Verdict.MALFORMED),
])
def test_a_request_is_accepted_only_signed_with_the_secret_within_five_minutes(secret, ts, sig, body, now, verdict):
    assert check_request(secret, ts, sig, body, now=now) is verdict


def form(payload) -> bytes:
    return urlencode({"payload": payload if isinstance(payload, str) else json.dumps(payload)}).encode()


CLICK = {"type": "block_actions", "user": {"id": "U0ALICE01"}, "team": {"id": "T0"},
         "response_url": "https://hooks.slack.com/actions/T0/1/abc",
         "message": {"ts": "1.000001", "text": "fallback", "blocks": [
             {"type": "header", "block_id": "h"}, action_block(IID, console_url="https://c/incidents/" + IID),
             {"type": "context", "block_id": "see"}]},
         "actions": [{"action_id": "erdu.ack", "value": IID, "action_ts": "2.5"}]}


def test_a_click_is_read_from_the_form_and_named_by_what_was_clicked():
    click = parse_interaction(form(CLICK), response_hosts=["hooks.slack.com"])
    assert (click.user_id, click.incident_id, click.action.value) == ("U0ALICE01", IID, "erdu.ack")
    retried = parse_interaction(form(CLICK), response_hosts=["hooks.slack.com"])
    other = parse_interaction(form({**CLICK, "actions": [{**CLICK["actions"][0], "action_ts": "3.5"}]}),
                              response_hosts=["hooks.slack.com"])
    assert click.key == retried.key != other.key


@pytest.mark.parametrize(("body", "message"), [
    (b"\xff\xfe", "form-encoded"),
    (b"payload=%7B&payload=%7B", "exactly one payload"),
    (b"nothing=here", "exactly one payload"),
    (form("{not json"), "not JSON"),
    (form([1, 2]), "not a JSON object"),
    (form({**CLICK, "type": "view_submission"}), "only block_actions"),
    (form({**CLICK, "actions": []}), "actions is empty"),
    (form({**CLICK, "user": {"id": "<!channel>"}}), "not a Slack member id"),
    (form({**CLICK, "response_url": "https://evil.example.com/x"}), "not in slack.response_hosts"),
    (form({**CLICK, "response_url": "file:///etc/passwd"}), r"not an http\(s\) URL"),
])
def test_a_signed_body_that_is_not_an_erdu_click_is_refused_with_the_reason(body, message):
    with pytest.raises(InteractionError, match=message):
        parse_interaction(body, response_hosts=["hooks.slack.com"])


def test_the_updated_message_says_who_acted_where_the_buttons_were():
    click = parse_interaction(form(CLICK), response_hosts=["hooks.slack.com"])
    buttons = action_block(IID, console_url="https://c", acknowledged=True)
    update = updated_message(click, "acked by alice", buttons)
    assert update["replace_original"] is True and update["text"] == "fallback"
    assert [b.get("block_id") for b in update["blocks"]] == ["h", "erdu.acted.1", "erdu.actions", "see"]
    assert [e["action_id"] for e in update["blocks"][2]["elements"]] == ["erdu.resolve", "erdu.silence", "erdu.open"]
    again = updated_message(parse_interaction(form({**CLICK, "message": {**CLICK["message"],
                                                                         "blocks": update["blocks"]}}),
                                              response_hosts=["hooks.slack.com"]), "resolved", None)
    assert [b.get("block_id") for b in again["blocks"]] == ["h", "erdu.acted.1", "erdu.acted.2", "see"]


def test_two_people_cannot_share_one_slack_member_id():
    from erdu_tasks.errors import ConfigError
    from erdu_tasks.settings import load_settings

    with pytest.raises(ConfigError, match="share contacts.slack_user U0SAME001"):
        load_settings(people={"alice": {"contacts": {"slack_user": "U0SAME001"}},
                              "bob": {"role": "admin", "contacts": {"slack_user": "U0SAME001"}}})
