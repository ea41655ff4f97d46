"""Silence matchers and windows: parsing, matching, which silence applies, and times."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from erdu_tasks.model import Incident, Severity, Status
from erdu_tasks.escalation.silences import (
    Matcher,
    MatchOp,
    Silence,
    SilenceError,
    SilenceState,
    parse_matchers,
    parse_when,
    silencing,
)

T0 = datetime(2025, 3, 3, 12, 0, tzinfo=timezone.utc)


def incident(**kw) -> Incident:
    base = dict(id="INC-20250303120000-00000001", fingerprint="fp-db-1", title="Database connection failed",
                description="", severity=Severity.P2, status=Status.DETECTED, source="test", service="orders-db",
                affected_services=["orders-db", "checkout"], tags=["database", "performance"],
                labels={"env": "prod", "team": "payments"})
    base.update(kw)
    return Incident(**base)


def silence(*matchers: str, start=T0, end=T0 + timedelta(hours=1), **kw) -> Silence:
    return Silence(kw.pop("id", "SIL-1"), parse_matchers(matchers), start, end, "alice", "db maintenance", **kw)


@pytest.mark.parametrize(("text", "name", "op", "value"), [
    ("service=orders-db", "service", MatchOp.EQUAL, "orders-db"),
    ("service != checkout", "service", MatchOp.NOT_EQUAL, "checkout"),
    ("tag=~data.*", "tag", MatchOp.REGEX, "data.*"),
    ("labels.env!~dev|test", "label.env", MatchOp.NOT_REGEX, "dev|test"),
    ('label.team="pay ments"', "label.team", MatchOp.EQUAL, "pay ments"),
    ("fingerprint=fp-db-1", "fingerprint", MatchOp.EQUAL, "fp-db-1"),
])
def test_it_parses_alertmanager_style_matchers(text, name, op, value):
    assert Matcher.parse(text) == Matcher(name, op, value)


@pytest.mark.parametrize(("text", "message"), [
    ("service", "is not name=value"),
    ("host=web1", "unknown matcher name 'host'"),
    ("tag=~(unclosed", "bad regex for tag"),
    ("tag=~(a)\\1", "bad regex for tag"),
    ("service=", "needs a value"),
])
def test_it_refuses_bad_matchers_with_the_reason(text, message):
    with pytest.raises(SilenceError, match=message):
        Matcher.parse(text)


def test_a_silence_needs_a_matcher():
    with pytest.raises(SilenceError, match="at least one matcher"):
        parse_matchers([])


@pytest.mark.parametrize(("matchers", "hit"), [
    (["service=orders-db"], True),
    (["service=checkout"], True),                    # an affected service counts
    (["service=billing"], False),
    (["service!=billing"], True),
    (["service!=checkout"], False),
    (["service=~orders-.*"], True),
    (["service=~orders"], False),                    # regexes match the whole value
    (["tag=database", "severity=P2"], True),
    (["tag=database", "severity=P1"], False),        # every matcher must hold
    (["label.env=prod"], True),
    (["label.region="], True),                       # a missing label is ""
    (["label.env!~prod|staging"], False),
    (["fingerprint=fp-db-1"], True),
])
def test_it_matches_incidents(matchers, hit):
    assert silence(*matchers).matches(incident()) is hit


def test_state_follows_the_window_and_expiry():
    s = silence("service=orders-db", start=T0 + timedelta(minutes=10), end=T0 + timedelta(minutes=70))
    assert s.state(T0) is SilenceState.PENDING
    assert s.state(T0 + timedelta(minutes=10)) is SilenceState.ACTIVE
    assert s.state(T0 + timedelta(minutes=70)) is SilenceState.EXPIRED
    expired = silence("service=orders-db", expired_at=T0 + timedelta(minutes=5))
    assert expired.state(T0 + timedelta(minutes=4)) is SilenceState.ACTIVE
    assert expired.state(T0 + timedelta(minutes=5)) is SilenceState.EXPIRED


def test_the_silence_that_applies_is_active_matching_and_ends_last():
    short = silence("service=orders-db", id="SIL-short", end=T0 + timedelta(minutes=30))
    long = silence("tag=database", id="SIL-long", end=T0 + timedelta(hours=3))
    other = silence("service=billing", id="SIL-other", end=T0 + timedelta(hours=9))
    later = silence("service=orders-db", id="SIL-later", start=T0 + timedelta(hours=1), end=T0 + timedelta(hours=9))
    found = silencing([short, long, other, later], incident(), T0 + timedelta(minutes=1))
    assert found is not None and found.id == "SIL-long"
    assert silencing([short, other], incident(), T0 + timedelta(hours=2)) is None


def test_times_are_iso_or_a_delay_from_now():
    assert parse_when("now", T0) == T0
    assert parse_when("30m", T0) == T0 + timedelta(minutes=30)
    assert parse_when("2025-03-03T22:00:00Z", T0) == datetime(2025, 3, 3, 22, tzinfo=timezone.utc)
    assert parse_when("2025-03-03T22:00:00", T0).tzinfo is not None
    with pytest.raises(SilenceError, match="neither a time"):
        parse_when("tomorrow-ish", T0)
