"""Who is on call: rotations, later layers, overrides, iCal recurrences and handoffs across DST (pure)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from erdu_tasks.errors import ConfigError
from erdu_tasks.escalation.oncall import calendar_events, next_handoff, parse_calendar, upcoming, who_is_on_call
from erdu_tasks.settings import load_settings
from erdu_tasks.settings.people import Person
from erdu_tasks.settings.schedules import ScheduleConfig

BERLIN = ZoneInfo("Europe/Berlin")
UTC = timezone.utc


def local(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN)


def schedule(**extra) -> ScheduleConfig:
    return ScheduleConfig.model_validate({"time_zone": "Europe/Berlin", **extra})


WEEKLY = {"name": "weekly", "start": "2026-01-05", "rotation": "weekly", "handoff": "09:00",
          "participants": ["alice", "bob", "carol"]}


@pytest.mark.parametrize("moment, expected", [
    (local(2026, 1, 5, 8, 59), None),            # before the layer starts
    (local(2026, 1, 5, 9, 0), "alice"),
    (local(2026, 1, 12, 8, 59), "alice"),
    (local(2026, 1, 12, 9, 0), "bob"),
    (local(2026, 1, 19, 9, 0), "carol"),
    (local(2026, 1, 26, 9, 0), "alice"),         # the rotation starts over
])
def test_a_weekly_rotation_hands_off_in_order_at_its_local_time(moment, expected):
    assert who_is_on_call("p", schedule(layers=[WEEKLY]), moment).person == expected


def test_a_later_layer_wins_while_it_runs_and_an_override_wins_over_every_layer():
    cover = {"name": "cover", "start": "2026-02-02", "end": "2026-02-16", "rotation": "1d", "participants": ["dave"]}
    swap = {"start": "2026-02-10T12:00", "end": "2026-02-11T12:00", "person": "erin"}
    s = schedule(layers=[WEEKLY, cover], overrides=[swap])
    assert who_is_on_call("p", s, local(2026, 2, 2, 8)).person == "alice"      # the week of 26 January
    on = who_is_on_call("p", s, local(2026, 2, 3, 12))
    assert (on.person, on.source) == ("dave", "layer cover")
    on = who_is_on_call("p", s, local(2026, 2, 10, 13))
    assert (on.person, on.source, on.since) == ("erin", "override", local(2026, 2, 10, 12).astimezone(UTC))
    assert who_is_on_call("p", s, local(2026, 2, 16, 9)).person == "alice"     # the cover layer has ended
    shifts = upcoming("p", s, local(2026, 2, 9, 12), count=4)
    assert [(x.person, x.end.astimezone(BERLIN).day if x.end else None) for x in shifts] == \
        [("dave", 10), ("erin", 11), ("dave", 16), ("alice", 23)]


def test_a_daily_handoff_stays_at_nine_local_across_both_dst_changes_in_berlin():
    s = schedule(layers=[{"start": "2026-03-27", "rotation": "daily", "handoff": "09:00",
                          "participants": ["alice", "bob"]}])
    # Clocks go forward on Sunday 29 March 2026: 09:00 is 08:00 UTC before, 07:00 UTC after.
    change = next_handoff("p", s, local(2026, 3, 28, 9, 30))
    assert change.at == datetime(2026, 3, 29, 7, 0, tzinfo=UTC) and change.at.astimezone(BERLIN).hour == 9
    assert (change.from_person, change.to_person) == ("bob", "alice")
    assert who_is_on_call("p", s, datetime(2026, 3, 29, 7, 30, tzinfo=UTC)).person == "alice"
    assert who_is_on_call("p", s, datetime(2026, 3, 29, 6, 59, tzinfo=UTC)).person == "bob"   # a 23-hour shift
    # Clocks go back on Sunday 25 October 2026: the shift that spans it lasts 25 hours.
    before = next_handoff("p", s, local(2026, 10, 24, 9, 30))
    after = next_handoff("p", s, before.at)
    assert before.at == datetime(2026, 10, 25, 8, 0, tzinfo=UTC)
    assert after.at - before.at == timedelta(hours=24) and after.at == datetime(2026, 10, 26, 8, 0, tzinfo=UTC)
    assert before.at - next_handoff("p", s, local(2026, 10, 23, 9, 30)).at == timedelta(hours=25)


def test_a_handoff_at_a_time_the_clocks_skip_happens_an_hour_later_by_the_clock():
    s = schedule(layers=[{"start": "2026-03-28", "rotation": "daily", "handoff": "02:30",
                          "participants": ["alice", "bob"]}])
    change = next_handoff("p", s, local(2026, 3, 28, 12))
    assert change.at == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)       # 03:30 CEST
    assert change.at.astimezone(BERLIN).hour == 3


ICS = b"""BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//erdu tests//EN
BEGIN:VEVENT
UID:weekends@erdu
DTSTART;TZID=Europe/Berlin:20260306T180000
DTEND;TZID=Europe/Berlin:20260309T090000
RRULE:FREQ=WEEKLY;BYDAY=FR;COUNT=8
EXDATE;TZID=Europe/Berlin:20260320T180000
SUMMARY:Weekend on call: Carol
END:VEVENT
BEGIN:VEVENT
UID:holiday@erdu
DTSTART;VALUE=DATE:20260320
DTEND;VALUE=DATE:20260323
SUMMARY:Holiday cover
ATTENDEE;CN=Dave Doe:mailto:DAVE@example.com
END:VEVENT
BEGIN:VEVENT
UID:lunch@erdu
DTSTART:20260310T110000Z
DTEND:20260310T120000Z
SUMMARY:Team lunch
END:VEVENT
END:VCALENDAR
"""

PEOPLE = {"alice": Person(), "carol": Person(),
          "dave": Person.model_validate({"contacts": {"email": "dave@example.com"}})}


def test_ical_recurrences_are_expanded_with_exdates_and_people_found_by_summary_or_attendee():
    calendar = parse_calendar(ICS)
    events, unmatched = calendar_events(calendar, local(2026, 3, 1), local(2026, 4, 30), BERLIN, PEOPLE)
    assert unmatched == ["Team lunch"]
    carol = [e for e in events if e.person == "carol"]
    assert len(carol) == 7                                          # 8 Fridays less the one excluded
    assert carol[0].start == local(2026, 3, 6, 18).astimezone(UTC)
    assert local(2026, 3, 20, 18).astimezone(UTC) not in [e.start for e in carol]
    s = schedule(layers=[{"start": "2026-01-01", "rotation": "1d", "participants": ["alice"]}], calendar="x.ics")
    assert who_is_on_call("p", s, local(2026, 3, 7, 12), events).person == "carol"
    assert who_is_on_call("p", s, local(2026, 3, 21, 12), events).person == "dave"      # all-day, by e-mail
    assert who_is_on_call("p", s, local(2026, 3, 10, 12), events).person == "alice"
    change = next_handoff("p", s, local(2026, 3, 10, 12), events)
    assert (change.at, change.to_person) == (local(2026, 3, 13, 18).astimezone(UTC), "carol")


def test_a_broken_calendar_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="not an iCalendar file"):
        parse_calendar(b"BEGIN:VCALENDAR\nthis is not ical")


@pytest.mark.parametrize("section, says", [
    ({"people": {"alice": {}}, "oncall": {"schedules": {"p": {"layers": [dict(WEEKLY)]}}}},
     "oncall.schedules.p names unknown people ['bob', 'carol']"),
    ({"oncall": {"schedules": {"p": {"time_zone": "Mars/Olympus", "calendar": "x.ics"}}}},
     "unknown timezone 'Mars/Olympus'"),
    ({"oncall": {"schedules": {"p": {"overrides": []}}}}, "a schedule needs layers or a calendar"),
    ({"oncall": {"schedules": {"p": {"calendar": "x.ics", "overrides": [
        {"start": "2026-01-02T00:00", "end": "2026-01-01T00:00", "person": "a"}]}}}}, "is not after start"),
    ({"escalation": {"policies": {"P1": [{"person": "zed"}]}}}, "level 1 names undefined person(s) ['zed']"),
    ({"escalation": {"policies": {"P1": [{"ack_deadline": "5m"}, {"channels": ["file"]}]}}},
     "a level needs channels, a schedule or a person"),
    ({"oncall": {"contact_channels": {"email": "file"}}}, "channel 'file' is a file channel; email contacts need"),
])
def test_bad_schedules_and_targets_are_refused_at_start_up(section, says):
    with pytest.raises(ConfigError) as caught:
        load_settings(**section)
    assert says in str(caught.value)


def test_the_oncall_command_answers_now_next_and_show_and_refuses_unknown_schedules(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from erdu_tasks.cli.main import app
    from erdu_tasks.settings import get_settings

    (tmp_path / "erdu.yaml").write_text(
        "people: {alice: {}, bob: {}, carol: {}}\n"
        "oncall:\n  schedules:\n    primary:\n      time_zone: Europe/Berlin\n"
        "      layers: [{start: 2026-03-27, rotation: daily, participants: [alice, bob]}]\n"
        "      overrides: [{start: '2026-03-30T12:00', end: '2026-03-31T12:00', person: carol}]\n")
    monkeypatch.setenv("ERDU_CONFIG", str(tmp_path / "erdu.yaml"))
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        now = runner.invoke(app, ["oncall", "now", "primary", "--at", "2026-03-29T09:30"])
        assert now.exit_code == 0 and "primary: alice (layer 1, since 2026-03-29T09:00+02:00)" in now.output
        nxt = runner.invoke(app, ["oncall", "next", "primary", "--at", "2026-03-28T12:00"])
        assert "primary: bob -> alice at 2026-03-29T09:00+02:00 (2026-03-29T07:00+00:00)" in nxt.output
        shown = runner.invoke(app, ["oncall", "show", "primary", "--at", "2026-03-30T10:00", "--json", "--count", "3"])
        assert [s["person"] for s in __import__("json").loads(shown.output)["shifts"]] == ["bob", "carol", "alice"]
        unknown = runner.invoke(app, ["oncall", "now", "nope"])
        assert unknown.exit_code == 1 and "no schedule 'nope'; defined schedules: primary" in unknown.output
        bad = runner.invoke(app, ["oncall", "next", "primary", "--at", "yesterday"])
        assert bad.exit_code == 2 and "is not an ISO 8601 time" in bad.output
    finally:
        get_settings.cache_clear()


def test_a_page_names_the_person_on_each_channel_and_a_bad_contact_fails_for_good():
    from erdu_tasks.escalation.channels import Notification, NotificationKind
    from erdu_tasks.escalation.channels.file import file_stem
    from erdu_tasks.escalation.channels.pagerduty import trigger_body
    from erdu_tasks.escalation.channels.slack import slack_payload
    from erdu_tasks.escalation.contacts import Pager, parse_delivery
    from erdu_tasks.escalation.schedules import Rota
    from erdu_tasks.settings.escalation import EscalationConfig, LevelConfig
    from erdu_tasks.settings.schedules import OncallConfig

    n = Notification(incident_id="INC-1", title="<!channel> db down", severity="P1", status="escalated", reason="x")
    slack = slack_payload(n.for_person("alice", "U024BE7LH"))
    assert slack["text"].startswith("<@U024BE7LH> ") and "&lt;!channel&gt;" in slack["text"]
    mrkdwn = [b["text"]["text"] for b in slack["blocks"] if b.get("text", {}).get("type") == "mrkdwn"]
    assert mrkdwn[0] == "<@U024BE7LH> you are paged (on call as alice)"
    assert "<!channel>" not in slack["text"] + " ".join(mrkdwn)           # event text still cannot ping anyone
    details = trigger_body(n.for_person("bob", "PABC123"), "key")["payload"]["custom_details"]
    assert (details["paged_person"], details["pagerduty_user"]) == ("bob", "PABC123")
    reminder = Notification.reminder(silence_id="SIL-1", what="service=batch", ends_at=datetime(2026, 1, 1, tzinfo=UTC),
                                     held=["INC-2"], author="carol", see_command="erdu silence ls")
    assert reminder.kind is NotificationKind.REMINDER and file_stem(reminder) == "SIL-1-reminder"
    assert reminder.to_dict()["reminder"] == {"silence_id": "SIL-1", "held": 1, "sample_incidents": ["INC-2"]}

    config = EscalationConfig.from_section({"channels": {"hook": {"type": "webhook", "url": "https://x.example/h",
                                                                  "secret": "a-long-shared-secret-for-hmac"}}})
    people = {"alice": Person.model_validate({"contacts": {"webhook": "file:///etc/passwd", "email": "a@x.example"}})}
    oncall = OncallConfig()
    pager = Pager(config, oncall, people, Rota(oncall, people))
    page = pager.page("alice", "person")
    assert page.deliveries == ("@alice/webhook",) and page.skipped == ("email: no channel of type email is configured",)
    assert parse_delivery("@alice/webhook") == ("alice", "webhook") and parse_delivery("hook") is None
    result = pager.channel("@alice/webhook").send(n)
    assert not result.ok and result.permanent and "must be an absolute http" in result.detail
    assert pager.level_pages(LevelConfig(person=["alice"]), datetime.now(UTC)).describe() == \
        "paging alice (person) via webhook"
    gap = pager.level_pages(LevelConfig(schedule=["nope"]), datetime.now(UTC))
    assert gap.pages == () and gap.problems[0].startswith("schedule nope: no schedule 'nope'")


def test_a_calendar_file_is_read_again_when_it_changes_and_a_bad_one_is_named(tmp_path):
    import os

    from erdu_tasks.escalation.schedules import CalendarUnreadable, Rota
    from erdu_tasks.settings.schedules import OncallConfig

    path = tmp_path / "oncall.ics"
    path.write_bytes(ICS)
    config = OncallConfig.from_section({"schedules": {"cal": {"time_zone": "Europe/Berlin", "calendar": str(path)}}})
    rota = Rota(config, PEOPLE)
    assert rota.now("cal", local(2026, 3, 7, 12)).person == "carol"
    assert rota.now("cal", local(2026, 3, 10, 12)).person is None                 # no layer: nobody
    path.write_bytes(ICS.replace(b"Weekend on call: Carol", b"Weekend on call: alice, really"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert rota.now("cal", local(2026, 3, 7, 12)).person == "alice"
    path.write_bytes(b"garbage")
    with pytest.raises(CalendarUnreadable, match=r"oncall.ics: not an iCalendar file"):
        rota.now("cal", local(2026, 3, 7, 12))
    assert rota.overview(local(2026, 3, 7, 12))[0]["error"].startswith("calendar ")
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(CalendarUnreadable, match="not a regular file"):
        rota.check()
