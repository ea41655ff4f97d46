"""Escalation policy decisions with an injected clock: levels, repeats, acks, quiet hours, rate limits."""

from __future__ import annotations

import re
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from erdu_tasks.escalation import policy as ep
from erdu_tasks.errors import ConfigError
from erdu_tasks.settings import escalation as escalation_settings
from erdu_tasks.escalation.policy import (
    EscalationConfig,
    PlanState,
    RetryConfig,
    RetryDecision,
    SentStep,
    delivery_retry,
    parse_duration,
    plan_escalation,
    plan_steps,
    rate_window,
    step_key,
)
from erdu_tasks.model import Severity
from erdu_tasks.escalation.channels import DeliveryResult, Notification, NotificationKind, build_channels
from erdu_tasks.escalation.channels.file import FileChannel, FileSettings

T0 = datetime(2025, 3, 3, 12, 0, tzinfo=timezone.utc)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def config(section: dict) -> EscalationConfig:
    return EscalationConfig.from_settings_section(section, alerts_dir="alerts")


# Level 1 (page): 5 min to ack, re-notify every 2 min. Level 2 (mail, last): every 3 min.
TWO_LEVELS = config(
    {
        "channels": {
            "page": {"type": "webhook", "url": "http://127.0.0.1:9/x", "secret": "s" * 16},
            "mail": {"type": "file"},
        },
        "policies": {
            "P1": [
                {"channels": ["page"], "ack_deadline": "5m", "repeat_interval": "2m"},
                {"channels": ["page", "mail"], "repeat_interval": "3m"},
            ]
        },
    }
)
POLICY = TWO_LEVELS.policy_for("P1")


def sweep(policy, times, *, ack_at=None, sweepers=1, started_at=T0):
    """Run `sweepers` sweepers at each time; a set of step keys plays the database's unique key."""
    claimed: set[str] = set()
    records: list[SentStep] = []
    sent: list[tuple[float, int, int]] = []
    for now in times:
        # Doubled sweepers read the same snapshot at the same time; only the unique key separates them.
        plans = [
            plan_steps(policy, started_at=started_at, now=now, acknowledged_at=ack_at, sent=list(records))
            for _ in range(sweepers)
        ]
        for plan in plans:
            for step in plan.due:
                key = step_key("INC-1", started_at, step.level, step.repeat)
                if key in claimed:
                    continue
                claimed.add(key)
                records.append(SentStep(step.level, step.repeat, sent_at=now))
                sent.append(((now - T0) / timedelta(minutes=1), step.level, step.repeat))
    return sent


EVERY_30S = [at(m / 2) for m in range(0, 41)]  # 0 .. 20 minutes


def test_it_escalates_to_level_two_after_the_deadline_and_repeats_until_acked():
    sent = sweep(POLICY, EVERY_30S, ack_at=at(12.2))
    assert sent == [
        (0.0, 1, 0),  # level 1 at once
        (2.0, 1, 1),  # level 1 repeats every 2 min ...
        (4.0, 1, 2),
        (5.0, 2, 0),  # ... until its 5 min ack deadline: level 2
        (8.0, 2, 1),  # level 2 repeats every 3 min
        (11.0, 2, 2),
        # acknowledged at 12.2: nothing more (the 14.0 repeat never goes out)
    ]


def test_a_doubled_sweeper_sends_nothing_twice():
    single = sweep(POLICY, EVERY_30S, sweepers=1)
    assert len(single) == len(set(single)) == 9
    assert sweep(POLICY, EVERY_30S, sweepers=3) == single


def test_a_redelivered_plan_with_the_same_records_is_empty():
    records = [SentStep(1, 0, at(0)), SentStep(1, 1, at(2))]
    first = plan_steps(POLICY, started_at=T0, now=at(3), sent=records)
    assert first.state is PlanState.WAITING and first.due == ()
    assert first.next_at == at(4)


@pytest.mark.parametrize(
    "now, sent, ack, state, due, next_at",
    [
        # before anything was sent: level 1's first notification
        (0, [], None, PlanState.NOTIFY, [(1, 0)], 2),
        (1, [(1, 0)], None, PlanState.WAITING, [], 2),
        (2, [(1, 0)], None, PlanState.NOTIFY, [(1, 1)], 4),
        # deadline passed: level 2 starts, level 1 stops repeating
        (5, [(1, 0), (1, 1), (1, 2)], None, PlanState.NOTIFY, [(2, 0)], 8),
        # a sweeper that was down for 30 minutes catches up with one message per level, no burst
        (30, [], None, PlanState.NOTIFY, [(1, 0), (2, 0)], 32),
        # acknowledged: nothing, whatever is pending
        (30, [], 29, PlanState.ACKNOWLEDGED, [], None),
        # ack in the future (clock skew) does not count yet
        (0, [], 1, PlanState.NOTIFY, [(1, 0)], 2),
        # escalation not started yet
        (-1, [], None, PlanState.WAITING, [], 0),
    ],
)
def test_plan_table(now, sent, ack, state, due, next_at):
    plan = plan_steps(
        POLICY,
        started_at=T0,
        now=at(now),
        acknowledged_at=at(ack) if ack is not None else None,
        sent=[SentStep(lv, r) for lv, r in sent],
    )
    assert plan.state is state
    assert [(s.level, s.repeat) for s in plan.due] == due
    assert plan.next_at == (at(next_at) if next_at is not None else None)


def test_after_catching_up_the_next_repeat_keeps_the_schedule():
    sent = sweep(POLICY, [at(30), at(30.5), at(31), at(32), at(33), at(35)])
    assert sent == [(30.0, 1, 0), (30.0, 2, 0), (32.0, 2, 9), (35.0, 2, 10)]


def test_steps_carry_their_level_channels():
    plan = plan_steps(POLICY, started_at=T0, now=at(5), sent=[(1, 0)])
    assert [(s.level, s.channels, s.due_at) for s in plan.due] == [(2, ("page", "mail"), at(5))]


def test_when_every_delivery_of_a_level_gives_up_the_next_level_starts_at_once():
    records = [SentStep(1, 0, sent_at=at(0), failed_at=at(1))]
    plan = plan_steps(POLICY, started_at=T0, now=at(1), sent=records)
    assert [(s.level, s.repeat) for s in plan.due] == [(2, 0)]


def test_the_last_level_stops_after_max_repeats():
    cfg = config({"policies": {"P3": [{"channels": ["file"], "repeat_interval": "10m", "max_repeats": 2}]}})
    policy = cfg.policy_for("P3")
    sent = sweep(policy, [at(m) for m in range(0, 61, 5)])
    assert sent == [(0.0, 1, 0), (10.0, 1, 1), (20.0, 1, 2)]
    records = [SentStep(1, r) for r in range(3)]
    assert plan_steps(policy, started_at=T0, now=at(60), sent=records).state is PlanState.EXHAUSTED


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="naive"):
        plan_steps(POLICY, started_at=T0.replace(tzinfo=None), now=at(1))


def test_step_keys_are_stable_and_distinct_per_escalation():
    assert step_key("INC-1", T0, 2, 1) == step_key("INC-1", T0.astimezone(timezone(timedelta(hours=2))), 2, 1)
    assert step_key("INC-1", T0, 2, 1) != step_key("INC-1", at(60), 2, 1)
    assert step_key("INC-1", T0, 2, 1) != step_key("INC-1", T0, 2, 2)


# --------------------------------------------------------------------------- quiet hours

QUIET = config(
    {
        "quiet_hours": {"timezone": "Europe/Berlin", "start": "22:00", "end": "07:00"},
        "policies": {"default": [{"channels": ["file"]}]},
    }
)
BERLIN_WINTER = timezone(timedelta(hours=1))  # CET on 2025-03-03


@pytest.mark.parametrize(
    "severity, local_time, state",
    [
        ("P4", "23:00", PlanState.QUIET),
        ("P5", "06:59", PlanState.QUIET),
        ("P5", "22:00", PlanState.QUIET),
        ("P4", "07:00", PlanState.NOTIFY),
        ("P4", "12:00", PlanState.NOTIFY),
        ("P3", "23:00", PlanState.NOTIFY),
        ("P1", "23:00", PlanState.NOTIFY),
        ("P1", "03:00", PlanState.NOTIFY),
    ],
)
def test_quiet_hours_hold_back_p4_and_p5_but_never_p1(severity, local_time, state):
    hour, minute = map(int, local_time.split(":"))
    now = datetime(2025, 3, 3, hour, minute, tzinfo=BERLIN_WINTER)
    plan = plan_escalation(QUIET, severity=severity, service=None, started_at=now, now=now)
    assert plan.state is state
    if state is PlanState.QUIET:
        assert plan.due == () and [(s.level, s.repeat) for s in plan.held] == [(1, 0)]
        release = plan.next_at.astimezone(BERLIN_WINTER)
        assert (release.hour, release.minute) == (7, 0) and release > now
        # at release time the held step is due
        after = plan_escalation(QUIET, severity=severity, service=None, started_at=now, now=plan.next_at)
        assert after.state is PlanState.NOTIFY and [(s.level, s.repeat) for s in after.due] == [(1, 0)]
    else:
        assert [(s.level, s.repeat) for s in plan.due] == [(1, 0)]


def test_quiet_hours_follow_daylight_saving_time():
    # 2025-03-30: Berlin moves to CEST (UTC+2); 21:30 UTC is 23:30 local, inside the window.
    now = datetime(2025, 3, 30, 21, 30, tzinfo=timezone.utc)
    assert QUIET.quiet_hours.active(now)
    assert QUIET.quiet_hours.ends_after(now) == datetime(2025, 3, 31, 5, 0, tzinfo=timezone.utc)


def test_quiet_hours_within_one_day():
    cfg = config({"quiet_hours": {"timezone": "UTC", "start": "12:00", "end": "13:00", "severities": ["P3"]}})
    assert cfg.quiet_hours.holds(Severity.P3, T0)
    assert not cfg.quiet_hours.holds(Severity.P3, at(60))
    assert not cfg.quiet_hours.holds(Severity.P4, T0)


# --------------------------------------------------------------------------- rate limits and digests


def test_a_digest_becomes_one_file_of_kind_digest(tmp_path: Path):
    cfg = config({"channels": {"file": {"dir": str(tmp_path), "max_per_minute": 10}}})
    channel = build_channels(cfg)["file"]
    start = datetime(2025, 3, 3, 12, 0, 0, tzinfo=timezone.utc)
    sample = tuple(f"INC-20250303120000-{i:08x}" for i in range(10))
    digest = ep.Digest("file", start, start + ep.RATE_WINDOW, 490, sample)
    assert channel.send(digest.notification()).ok
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["DIGEST-20250303120000-digest-0001.json"]
    body = yaml.safe_load((tmp_path / files[0]).read_text())
    assert body["kind"] == "digest" and body["digest"]["held"] == 490


def test_rate_windows_are_aligned_minutes():
    assert rate_window(at(0.99)) == T0
    assert rate_window(at(1.0)) == at(1)
    n = ep.Digest("a", T0, at(1), 5).notification()
    assert n.kind is NotificationKind.DIGEST and "5 notification(s)" in n.title


# --------------------------------------------------------------------------- delivery retries

RETRY = RetryConfig(max_attempts=3, backoff_base="2s", backoff_cap="5s")
OK = DeliveryResult.sent("x")
DOWN = DeliveryResult.failed("x", "HTTP 503", permanent=False, response_code=503)
GONE = DeliveryResult.failed("x", "HTTP 404", permanent=True, response_code=404)
SLOW_DOWN = DeliveryResult.failed("x", "HTTP 429", permanent=False, response_code=429, retry_after=4)


@pytest.mark.parametrize(
    "result, attempt, decision, delay",
    [
        (OK, 1, RetryDecision.DONE, 0),
        (GONE, 1, RetryDecision.GIVE_UP, 0),
        (DOWN, 1, RetryDecision.RETRY, 2.0),  # base * 2**0, full jitter value 1.0
        (DOWN, 2, RetryDecision.RETRY, 4.0),
        (DOWN, 3, RetryDecision.GIVE_UP, 0),
        (SLOW_DOWN, 1, RetryDecision.RETRY, 4.0),  # Retry-After wins over a shorter backoff
    ],
)
def test_delivery_retry_table(result, attempt, decision, delay):
    plan = delivery_retry(result, attempt, RETRY, jitter=lambda: 1.0)
    assert plan.decision is decision and plan.delay == pytest.approx(delay)


# --------------------------------------------------------------------------- configuration


def test_an_empty_section_gives_one_file_channel_and_default_deadlines():
    cfg = EscalationConfig.from_settings_section({}, alerts_dir=Path("/srv/erdu/alerts"))
    assert list(cfg.channels) == ["file"] and cfg.channels["file"].dir == Path("/srv/erdu/alerts")
    assert isinstance(build_channels(cfg)["file"], FileChannel)
    deadlines = {s: cfg.policy_for(s).levels[0].ack_deadline for s in Severity}
    assert deadlines[Severity.P1] == timedelta(minutes=5)
    assert deadlines[Severity.P2] == timedelta(minutes=15)
    assert all(level.channels == ["file"] for s in Severity for level in cfg.policy_for(s).levels)
    assert cfg.quiet_hours is None


def test_the_documented_example_is_valid():
    doc = escalation_settings.__doc__
    block = doc[doc.index("    escalation:") : doc.index("Durations are")]
    section = yaml.safe_load(textwrap.dedent(block))["escalation"]
    cfg = EscalationConfig.from_settings_section(section, alerts_dir="alerts")
    assert set(cfg.channels) == {"file", "oncall-slack", "pd", "ops-hook", "mail"}
    assert cfg.policy_for("P1").levels[1].max_repeats == 12
    assert cfg.policy_for("P1", "payments").levels[0].channels == ["pd"]
    assert cfg.policy_for("P1", "payments", "db-oncall").levels[0].ack_deadline == timedelta(minutes=3)
    assert cfg.policy_for("P2", "payments", "db-oncall").levels[0].channels == ["pd"]  # no P2 in db-oncall
    cfg.check_policy_names({"orders-db": "db-oncall", "web": None})
    with pytest.raises(ConfigError, match=r"orders-db -> 'nope'"):
        cfg.check_policy_names({"orders-db": "nope"})
    assert cfg.policy_for("P3").levels[0].ack_deadline == timedelta(hours=1)
    assert cfg.policy_for("P2").levels[0].channels == list(cfg.channels)  # built-in default, all channels
    assert cfg.url_for("INC-1") == "https://erdu.example.com/incidents/INC-1"
    assert cfg.sweep_interval == timedelta(seconds=5) and cfg.stuck_after == timedelta(minutes=15)
    assert [r.targets for r in cfg.inhibit_rules] == ["dependants"]
    assert cfg.rate_limits()["oncall-slack"] == 10
    assert "app-password" not in repr(cfg)
    assert set(build_channels(cfg)) == set(cfg.channels)


def test_service_policies_fall_back_to_the_severity_policy():
    cfg = config(
        {
            "channels": {"file": {}, "other": {"type": "file", "dir": "elsewhere"}},
            "policies": {"P1": [{"channels": ["file"]}], "default": [{"channels": ["other"]}]},
            "services": {"db": {"P2": [{"channels": ["other", "file"]}]}},
        }
    )
    assert cfg.policy_for("P2", "db").levels[0].channels == ["other", "file"]
    assert cfg.policy_for("P1", "db").levels[0].channels == ["file"]
    assert cfg.policy_for("P4", "web").levels[0].channels == ["other"]
    assert cfg.channels["other"].dir == Path("elsewhere")


@pytest.mark.parametrize(
    "section, message",
    [
        ({"channels": {"x": {}}}, "channel 'x' needs a type"),
        ({"channels": {"x": {"type": "carrier-pigeon"}}}, "does not match any of the expected tags"),
        ({"policies": {"P1": [{"channels": ["nope"]}]}}, "policies.P1 level 1 uses undefined channel(s) ['nope']"),
        ({"policies": {"P1": [{"channels": ["file"]}, {"channels": ["file"]}]}}, "level 1 needs an ack_deadline"),
        ({"policies": {"P6": [{"channels": ["file"]}]}}, "escalation.policies.P6"),
        ({"policies": {"P1": [{"channels": ["file"], "ack_deadline": "soon"}]}}, "'soon' is not a duration"),
        ({"policies": {"P1": [{"channels": ["file"], "ack_deadline": -5}]}}, "must be positive"),
        ({"quiet_hours": {"start": "22:00", "end": "07:00", "severities": ["P1", "P5"]}}, "never hold back P1"),
        ({"quiet_hours": {"timezone": "Mars/Base", "start": "22:00", "end": "07:00"}}, "unknown timezone"),
        ({"quiet_hours": {"start": "22:00", "end": "22:00"}}, "window would be empty"),
        ({"quiet_hours": {"start": 1320, "end": "07:00"}}, 'quote times in YAML'),
        ({"channels": {"h": {"type": "webhook", "url": "ftp://h", "secret": "x" * 16}}}, "http:// or https://"),
        ({"channels": {"h": {"type": "webhook", "url": "http://h"}}}, "escalation.channels.h.webhook.secret"),
        ({"channels": {"m": {"type": "email", "host": "h", "sender": "a@b", "recipients": ["nobody"]}}},
         "is not an email address"),
        ({"channels": {"m": {"type": "email", "host": "h", "sender": "a@b", "recipients": ["c@d"], "username": "u"}}},
         "username and password go together"),
        ({"channels": {"f": {"type": "file", "colour": "red"}}}, "escalation.channels.f.file.colour"),
        ({"see_command": "erdu show {title}"}, "only {incident_id} is allowed"),
        ({"unknown": 1}, "escalation.unknown"),
    ],
)
def test_bad_config_gets_a_readable_error(section, message):
    with pytest.raises(ConfigError) as info:
        EscalationConfig.from_settings_section(section)
    assert message in str(info.value)
    assert "x" * 16 not in str(info.value)  # secrets never appear in errors


@pytest.mark.parametrize(
    "text, seconds",
    [(90, 90), ("90", 90), ("30s", 30), ("5m", 300), ("1h30m", 5400), ("2d", 172800), ("500ms", 0.5), ("1.5h", 5400)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "m5", "5 parsecs", "5m-", True, None, 0, "0s"])
def test_parse_duration_refuses(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_file_names_come_from_the_incident_id_level_and_a_counter(tmp_path: Path):
    channel = FileChannel("file", FileSettings(dir=tmp_path))
    first = channel.send(Notification("INC-20250303120000-abcd1234", "t", "P1", "escalated", "r", level=2))
    again = channel.send(Notification("INC-20250303120000-abcd1234", "t", "P1", "escalated", "r", level=2))
    hostile = channel.send(Notification("../../etc/passwd", "$(rm -rf /)", "P1", "escalated", "r"))
    assert Path(first.detail).name == "INC-20250303120000-abcd1234-L2-0001.json"
    assert Path(again.detail).name == "INC-20250303120000-abcd1234-L2-0002.json"
    assert Path(hostile.detail).parent == tmp_path
    assert re.fullmatch(r"incident-[0-9a-f]{16}-L1-0001\.json", Path(hostile.detail).name)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
