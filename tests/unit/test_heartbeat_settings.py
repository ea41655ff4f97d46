"""The heartbeats section: defaults, declared checks, the beat watch, and the beat schedule entry."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from beat_schedule import beat_schedule
from erdu_tasks import names
from erdu_tasks.errors import ConfigError
from erdu_tasks.monitors.heartbeats import Heartbeat
from erdu_tasks.settings import load_settings

T0 = datetime(2025, 6, 2, 12, 0, tzinfo=timezone.utc)


def test_defaults_declared_checks_and_the_beat_watch():
    settings = load_settings(heartbeats={"checks": {"nightly-backup": {"period": "24h", "grace": 0}},
                                         "beat": {"max_age": "off"}})
    config = settings.heartbeats
    assert config.spec_for("nightly-backup").period == timedelta(hours=24)
    assert config.spec_for("nightly-backup").grace == timedelta(0)
    assert config.spec_for("anything").period == timedelta(minutes=5)     # created on its first ping
    assert config.beat.max_age is None
    assert load_settings().heartbeats.beat.max_age == timedelta(seconds=60)
    assert load_settings(heartbeats={"create_on_ping": False}).heartbeats.spec_for("anything") is None


@pytest.mark.parametrize(("section", "message"), [
    ({"checks": {"bad name": {}}}, "heartbeat name 'bad name'"),
    ({"checks": {"a": {"period": "soon"}}}, r"heartbeats\.checks\.a\.period"),
    ({"cheks": {}}, "cheks"),
])
def test_bad_heartbeat_settings_are_refused_with_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(heartbeats=section)


def test_beat_checks_heartbeats_on_the_monitor_queue():
    entry = beat_schedule(load_settings(heartbeats={"check_interval": "5s"}))["heartbeats"]
    assert entry["task"] == names.MONITOR_HEARTBEATS and entry["schedule"] == 5.0
    assert entry["options"]["queue"] == names.Queue.MONITOR.value
    assert names.TASK_ROUTES[names.HEARTBEAT] == {"queue": names.Queue.INGEST.value}
    assert "heartbeat:" in names.OWN_DEDUP_NAMESPACES


@pytest.mark.parametrize(("last_seen", "now", "state"), [
    (None, T0 + timedelta(seconds=89), "new"),
    (None, T0 + timedelta(seconds=90), "late"),
    (T0 + timedelta(seconds=60), T0 + timedelta(seconds=149), "up"),
    (T0 + timedelta(seconds=60), T0 + timedelta(seconds=150), "late"),
])
def test_a_heartbeat_is_late_once_period_and_grace_have_passed(last_seen, now, state):
    beat = Heartbeat("backup", timedelta(seconds=60), timedelta(seconds=30), True, T0, last_seen, 0, "new", None,
                     None)
    assert beat.state_at(now) == state


def test_the_beat_watch_must_outlast_a_reconcile_interval():
    with pytest.raises(ConfigError, match=r"heartbeats.beat.max_age \(60 s\) must be longer than "
                                          r"reconcile_interval_seconds \(90 s\)"):
        load_settings(reconcile_interval_seconds=90)
    assert load_settings(reconcile_interval_seconds=90, heartbeats={"beat": {"max_age": "off"}})


def test_the_ping_task_is_registered_where_the_ingest_and_monitor_workers_load_it():
    from erdu_tasks.app import ROLE_TASK_MODULES, app
    from erdu_tasks.tasks import heartbeats as heartbeat_tasks

    assert app.tasks[names.HEARTBEAT].name == heartbeat_tasks.heartbeat.name == names.HEARTBEAT
    assert app.tasks[names.MONITOR_HEARTBEATS].name == heartbeat_tasks.monitor_heartbeats.name
    assert "erdu_tasks.tasks.heartbeats" in ROLE_TASK_MODULES["ingest"]
    assert "erdu_tasks.tasks.heartbeats" in ROLE_TASK_MODULES["monitor"]
