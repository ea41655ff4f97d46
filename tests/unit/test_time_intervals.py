"""Recurring time intervals (Alertmanager's time_intervals): the matcher, table-driven with an injected clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from erdu_tasks.errors import ConfigError
from erdu_tasks.escalation.policy import PlanState, PolicyConfig, plan_steps
from erdu_tasks.escalation.silences import Silence, SilenceError, check_duration, parse_matchers
from erdu_tasks.settings import load_settings
from erdu_tasks.settings.intervals import TimeIntervalEntry, any_active, interval_matches

UTC = timezone.utc


def entry(**fields) -> TimeIntervalEntry:
    return TimeIntervalEntry.model_validate(fields)


def at(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


OFFICE_BERLIN = dict(weekdays=["monday:friday"], times=[{"start_time": "09:00", "end_time": "17:00"}],
                     location="Europe/Berlin")
NIGHT_NY = dict(times=[{"start_time": "01:00", "end_time": "02:00"}], location="America/New_York")
SPRING_GAP_BERLIN = dict(times=[{"start_time": "02:00", "end_time": "03:00"}], location="Europe/Berlin")
# A window across midnight, split as Alertmanager requires: 22:00-24:00 and 00:00-06:00.
NIGHTS = dict(times=[{"start_time": "22:00", "end_time": "24:00"}, {"start_time": "00:00", "end_time": "06:00"}])
FRIDAY_NIGHT = [dict(weekdays=["friday"], times=[{"start_time": "22:00", "end_time": "24:00"}]),
                dict(weekdays=["saturday"], times=[{"start_time": "00:00", "end_time": "06:00"}])]
LAST_THREE_DAYS = dict(days_of_month=["-3:-1"])
LAST_DAY = dict(days_of_month=[-1])
DAY_31_TO_END = dict(days_of_month=["28:31"])
Q1_NAMES = dict(months=["january:march"])
SUMMER_NUMBERS = dict(months=["6:8"], years=["2025:2026"])


@pytest.mark.parametrize(("fields", "moment", "expected"), [
    # Office hours in Berlin: wall clock, across the spring change (last Sunday of March 2025).
    (OFFICE_BERLIN, at(2025, 3, 28, 8, 30), True),     # Fri 09:30 CET (UTC+1)
    (OFFICE_BERLIN, at(2025, 3, 28, 7, 30), False),    # Fri 08:30 CET
    (OFFICE_BERLIN, at(2025, 3, 31, 7, 30), True),     # Mon 09:30 CEST (UTC+2): same UTC hour now inside
    (OFFICE_BERLIN, at(2025, 3, 31, 15, 30), False),   # Mon 17:30 CEST: end excluded
    (OFFICE_BERLIN, at(2025, 3, 31, 14, 59), True),    # Mon 16:59 CEST
    (OFFICE_BERLIN, at(2025, 3, 29, 10, 0), False),    # Saturday
    (OFFICE_BERLIN, at(2025, 10, 27, 8, 0), True),     # after the autumn change: Mon 09:00 CET
    # Berlin's skipped hour (02:00-03:00 on 2025-03-30) never exists, so never matches.
    (SPRING_GAP_BERLIN, at(2025, 3, 30, 0, 59), False),   # 01:59 CET
    (SPRING_GAP_BERLIN, at(2025, 3, 30, 1, 0), False),    # 03:00 CEST, right after the gap
    (SPRING_GAP_BERLIN, at(2025, 3, 31, 0, 30), True),    # the next day 02:30 CEST
    # New York, autumn 2025-11-02: 01:00-02:00 local happens twice and matches both times.
    (NIGHT_NY, at(2025, 11, 2, 5, 30), True),    # 01:30 EDT
    (NIGHT_NY, at(2025, 11, 2, 6, 30), True),    # 01:30 EST
    (NIGHT_NY, at(2025, 11, 2, 7, 30), False),   # 02:30 EST
    # New York, spring 2025-03-09: 02:00-03:00 is skipped; 01:30 EST still matches.
    (NIGHT_NY, at(2025, 3, 9, 6, 30), True),     # 01:30 EST
    (NIGHT_NY, at(2025, 3, 9, 7, 30), False),    # 03:30 EDT
    # Across midnight, split in two ranges (UTC).
    (NIGHTS, at(2025, 5, 5, 21, 59), False),
    (NIGHTS, at(2025, 5, 5, 22, 0), True),
    (NIGHTS, at(2025, 5, 5, 23, 59), True),
    (NIGHTS, at(2025, 5, 6, 0, 0), True),
    (NIGHTS, at(2025, 5, 6, 5, 59), True),
    (NIGHTS, at(2025, 5, 6, 6, 0), False),
    # Negative days of month: the last three days of February (leap and not) and of a 31-day month.
    (LAST_THREE_DAYS, at(2025, 2, 25, 12), False),
    (LAST_THREE_DAYS, at(2025, 2, 26, 12), True),
    (LAST_THREE_DAYS, at(2025, 2, 28, 23, 59), True),
    (LAST_THREE_DAYS, at(2024, 2, 26, 12), False),     # 2024 is a leap year: 27, 28, 29
    (LAST_THREE_DAYS, at(2024, 2, 27, 12), True),
    (LAST_THREE_DAYS, at(2025, 1, 29, 0, 0), True),
    (LAST_THREE_DAYS, at(2025, 1, 28, 23, 59), False),
    (LAST_DAY, at(2025, 4, 30, 8), True),
    (LAST_DAY, at(2025, 4, 29, 8), False),
    (LAST_DAY, at(2025, 5, 31, 8), True),
    (DAY_31_TO_END, at(2025, 2, 28, 8), True),          # clamped to a short month's end
    # Months by name and number, years.
    (Q1_NAMES, at(2025, 3, 31, 23, 59), True),
    (Q1_NAMES, at(2025, 4, 1, 0, 0), False),
    (SUMMER_NUMBERS, at(2026, 7, 1), True),
    (SUMMER_NUMBERS, at(2027, 7, 1), False),
    (SUMMER_NUMBERS, at(2025, 9, 1), False),
    # No field given: always.
    ({}, at(2025, 1, 1), True),
])
def test_an_entry_matches_when_all_its_fields_match(fields, moment, expected):
    assert entry(**fields).matches(moment) is expected


@pytest.mark.parametrize(("moment", "expected"), [
    (at(2025, 5, 2, 21, 59), False),   # Friday 21:59
    (at(2025, 5, 2, 22, 0), True),     # Friday 22:00
    (at(2025, 5, 3, 5, 59), True),     # Saturday 05:59: the second entry
    (at(2025, 5, 3, 6, 0), False),
    (at(2025, 5, 3, 22, 30), False),   # Saturday night is not Friday night
    (at(2025, 5, 2, 2, 0), False),     # Friday early morning: the Saturday entry's times, wrong day
])
def test_an_interval_matches_when_any_entry_matches(moment, expected):
    interval = [entry(**e) for e in FRIDAY_NIGHT]
    assert interval_matches(interval, moment) is expected


@pytest.mark.parametrize(("fields", "message"), [
    ({"times": [{"start_time": "22:00", "end_time": "06:00"}]}, "must be split in two"),
    ({"times": [{"start_time": "09:00", "end_time": "09:00"}]}, "is not before"),
    ({"times": [{"start_time": "24:30", "end_time": "24:40"}]}, "not a time of day"),
    ({"times": [{"start_time": 540, "end_time": "10:00"}]}, "quote times"),
    ({"weekdays": ["funday"]}, "'funday' is not a weekday"),
    ({"weekdays": ["friday:monday"]}, "ends before it starts"),
    ({"weekdays": ["saturday:sunday"]}, "ends before it starts"),   # Alertmanager's week starts on Sunday
    ({"weekdays": ["1"]}, "use a name"),
    ({"days_of_month": [0]}, "out of range"),
    ({"days_of_month": ["-1:-3"]}, "ends before it starts"),
    ({"days_of_month": ["32"]}, "out of range"),
    ({"months": ["smarch"]}, "not a month"),
    ({"months": ["13"]}, "out of range"),
    ({"location": "Mars/Olympus"}, "unknown timezone"),
    ({"weekday": ["monday"]}, "Extra inputs"),
])
def test_bad_entries_are_refused_with_the_value_at_fault(fields, message):
    with pytest.raises(ValueError, match=message):
        entry(**fields)


@pytest.mark.parametrize(("moment", "expected"), [
    (at(2025, 5, 4, 12), True),    # Sunday
    (at(2025, 5, 6, 12), True),    # Tuesday
    (at(2025, 5, 7, 12), False),   # Wednesday
    (at(2025, 5, 3, 12), False),   # Saturday
])
def test_a_weekday_range_starts_the_week_on_sunday(moment, expected):
    assert entry(weekdays=["sunday:tuesday"]).matches(moment) is expected


def test_names_are_case_insensitive_and_single_values_need_no_list():
    e = entry(weekdays="Saturday", months="DECEMBER", days_of_month=24)
    assert e.matches(at(2022, 12, 24, 10)) and not e.matches(at(2022, 12, 25, 10))


def test_any_active_names_the_matching_interval_and_ignores_unknown_names():
    intervals = {"nights": [entry(**NIGHTS)], "never": [entry(years=["1990"])]}
    assert any_active(["missing", "never", "nights"], intervals, at(2025, 5, 5, 23)) == "nights"
    assert any_active(["missing", "never"], intervals, at(2025, 5, 5, 23)) is None


# --------------------------------------------------------------------------- settings references


def test_an_undefined_interval_is_refused_at_start_naming_the_key():
    with pytest.raises(ConfigError, match=r"policies\.P3\.levels\.1\.mute_during names undefined time interval"):
        load_settings(escalation={"time_intervals": {"nights": [NIGHTS]},
                                  "policies": {"P3": [{"channels": ["file"], "mute_during": ["weekends"]}]}})
    with pytest.raises(ConfigError, match=r"services\.orders\.P2\.mute_during names undefined.*defines: nights"):
        load_settings(escalation={"time_intervals": {"nights": [NIGHTS]},
                                  "services": {"orders": {"P2": {"mute_during": ["x"],
                                                                 "levels": [{"channels": ["file"]}]}}}})
    with pytest.raises(ConfigError, match=r"escalation\.time_intervals\.nights\.0\.times\.0"):
        load_settings(escalation={"time_intervals": {"nights": [{"times": [{"start_time": "22:00",
                                                                             "end_time": "06:00"}]}]}})


def test_silence_settings_have_a_maximum_and_a_reminder_that_can_be_off():
    settings = load_settings(escalation={"silences": {"max_duration": "7d", "remind_before": "off"}})
    assert settings.escalation.silences.max_duration == timedelta(days=7)
    assert settings.escalation.silences.remind_before is None
    assert load_settings().escalation.silences.remind_before == timedelta(minutes=15)


def test_a_silence_longer_than_the_maximum_is_refused_with_the_setting_named():
    with pytest.raises(SilenceError, match=r"at most 7d \(escalation.silences.max_duration\); this one would "
                                           r"last 8d"):
        check_duration(at(2025, 1, 1), at(2025, 1, 9), timedelta(days=7))
    check_duration(at(2025, 1, 1), at(2025, 1, 8), timedelta(days=7))


# --------------------------------------------------------------------------- silences and escalation levels


def test_a_recurring_silence_is_active_only_while_its_interval_matches():
    intervals = {"nights": [entry(**NIGHTS)]}
    s = Silence("SIL-1", parse_matchers(["service=orders"]), at(2025, 5, 1), at(2025, 6, 1), "alice", "nightly",
                active_during=("nights",))
    assert s.active(at(2025, 5, 5, 23), intervals)
    assert not s.active(at(2025, 5, 5, 12), intervals)
    assert s.state(at(2025, 5, 5, 12), intervals).value == "pending"
    assert not s.active(at(2025, 5, 5, 23), {})         # an interval no longer defined never silences
    assert not s.active(at(2025, 6, 1, 23), intervals)  # past its window
    assert "during nights" in s.describe()


def _policy(**route) -> PolicyConfig:
    return PolicyConfig.model_validate({"levels": [{"channels": ["pager"], "ack_deadline": "5m",
                                                    "mute_during": route.pop("level1", [])},
                                                   {"channels": ["boss"]}], **route})


def test_a_route_muted_during_an_interval_holds_its_notifications_until_the_next_minute():
    intervals = {"nights": [entry(**NIGHTS)]}
    started = at(2025, 5, 5, 23, 0, 10)
    plan = plan_steps(_policy(mute_during=["nights"]), started_at=started, now=started, intervals=intervals)
    assert plan.state is PlanState.MUTED and plan.muted_by == "nights" and not plan.due
    assert [(s.level, s.repeat) for s in plan.held] == [(1, 0)]
    assert plan.next_at == at(2025, 5, 5, 23, 1)
    morning = at(2025, 5, 6, 6, 0)
    plan = plan_steps(_policy(mute_during=["nights"]), started_at=started, now=morning, intervals=intervals)
    assert plan.state is PlanState.NOTIFY and {s.level for s in plan.due} == {1, 2}


def test_a_muted_level_waits_while_the_next_level_still_pages():
    intervals = {"nights": [entry(**NIGHTS)]}
    started = at(2025, 5, 5, 23, 0)
    plan = plan_steps(_policy(level1=["nights"]), started_at=started, now=started + timedelta(minutes=6),
                      intervals=intervals)
    assert plan.state is PlanState.NOTIFY
    assert [s.level for s in plan.due] == [2] and [s.level for s in plan.held] == [1]
