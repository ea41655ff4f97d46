"""The monitors section: clear errors for what is wrong, warnings for what is merely missing."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter

from erdu_tasks.fixer.checks import CheckSpec
from erdu_tasks.errors import ConfigError
from erdu_tasks.monitors.celery_health import backlog_observations, live_roles, worker_observations
from erdu_tasks.monitors.config import load_monitors, schedule, warnings
from erdu_tasks.monitors.logtail import is_event
from erdu_tasks.monitors.system import Sample, observations
from erdu_tasks.ingest.detect.rules import RuleSet
from erdu_tasks.model import Event, Severity


def test_an_empty_section_runs_no_monitor():
    assert schedule(load_monitors({})) == {}


def test_the_log_monitor_defaults_to_half_a_second():
    cfg = load_monitors({"logs": {"files": [{"path": "/var/log/x.log"}]}})
    assert schedule(cfg) == {"monitor-logs": ("erdu.monitor.logs", 0.5)}


def test_an_empty_celery_section_runs_with_defaults():
    cfg = load_monitors({"celery": {}})
    assert cfg.celery.critical_roles == ["commander", "fixer"]
    assert "monitor-celery" in schedule(cfg)


@pytest.mark.parametrize("raw, where, what", [
    ({"probes": {"checks": [{"name": "a", "url": "ftp://x"}]}}, "monitors.probes.checks.0.url", "http://"),
    ({"probes": {"checks": [{"name": "a", "url": "http://"}]}}, "monitors.probes.checks.0.url", "no host"),
    ({"probes": {"checks": [{"name": "a", "url": "http://h"}, {"name": "a", "url": "http://h"}]}},
     "monitors.probes", "unique"),
    ({"logs": {"files": [{"path": "/x", "error_pattern": "(?<=a)b"}]}}, "error_pattern", "invalid regular"),
    ({"logs": {"files": []}}, "monitors.logs.files", "at least 1"),
    ({"celery": {"roles": ["chef"]}}, "monitors.celery.roles", "unknown role"),
    ({"celery": {"backlog": {"kitchen": 3}}}, "monitors.celery.backlog", "unknown queue"),
    ({"system": {"processes": [{"name": "a", "cmdline_contains": "b"}]}}, "monitors.system.processes.0", "exactly one"),
    ({"system": {"cpu": {"percent": 150}}}, "monitors.system.cpu.percent", "100"),
    ({"probe": {}}, "monitors.probe", "Extra inputs"),
])
def test_a_bad_section_is_refused_naming_the_key(raw, where, what):
    with pytest.raises(ConfigError) as info:
        load_monitors(raw)
    assert where in str(info.value) and what in str(info.value)


def test_a_missing_log_file_is_a_warning_not_an_error(tmp_path):
    cfg = load_monitors({"logs": {"files": [{"path": str(tmp_path / "later.log")},
                                            {"path": str(tmp_path / "*.log")}]}})
    found = warnings(cfg)
    assert any("later.log does not exist yet" in w for w in found)
    assert any("no file matches" in w for w in found)


def test_a_probe_carries_the_shape_of_the_http_validation_check():
    cfg = load_monitors({"probes": {"checks": [{"name": "orders", "url": "http://127.0.0.1:9/health",
                                                "expect_status": [200], "max_latency": 0.5, "timeout": 2}]}})
    spec = cfg.probes.checks[0].check_spec()
    check = TypeAdapter(CheckSpec).validate_python(spec)
    assert check.check == "http" and check.url == "http://127.0.0.1:9/health" and check.expect_status == [200]
    assert check.max_latency == 0.5 and check.timeout == 2


def _event(text):
    return Event(source="log", message=text)


@pytest.mark.parametrize("text, expected", [
    ("2024-05-01 ERROR db down", True),
    ("CRITICAL disk full", True),
    ('{"level": "error", "msg": "boom"}', True),
    ("[error] upstream closed", True),
    ("x\nTraceback (most recent call last):\n  File \"a\"\nKeyError: 1", True),
    ("2024-05-01 INFO request served", False),
    ("2024-05-01 INFO retry after error", False),           # says it is below warning level
    ("database connection failed for pool main", True),     # no level, but a rule gives it a severity
    ("payment processed", False),
    ("GET /api/health 200", False),                           # a tags-only rule is not enough
])
def test_only_error_level_lines_or_lines_a_rule_grades_are_events(text, expected):
    cfg = load_monitors({"logs": {"files": [{"path": "/x.log"}]}})
    assert is_event(text, cfg.logs.files[0], RuleSet.load(None), lambda: _event(text)) is expected


def test_live_roles_are_read_from_worker_names():
    live = live_roles({"fixer@h1": {"ok": "pong"}, "fixer@h2": {"ok": "pong"}, "ingest@h1": {"ok": "pong"}})
    assert live == {"fixer": ["fixer@h1", "fixer@h2"], "ingest": ["ingest@h1"]}
    assert live_roles(None) == {}


def test_a_missing_commander_or_fixer_is_p1_and_others_p2():
    cfg = load_monitors({"celery": {"missing_for": 0}}).celery
    obs = {o.key: o for o in worker_observations(cfg, {"ingest": ["ingest@h"]}, "h")}
    assert not obs["celery:worker:ingest"].failing
    assert obs["celery:worker:fixer"].failing and obs["celery:worker:fixer"].event.severity is Severity.P1
    assert obs["celery:worker:commander"].event.severity is Severity.P1
    assert obs["celery:worker:resolver"].event.severity is Severity.P2
    assert obs["celery:worker:fixer"].event.message == "No live ERDU worker for role fixer"


def test_backlog_thresholds_per_queue():
    cfg = load_monitors({"celery": {"backlog": {"default": 10, "ingest": 100}}}).celery
    obs = {o.key: o.failing for o in backlog_observations(cfg, {"ingest": 50, "fixer": 11}, "h")}
    assert obs == {"celery:backlog:ingest": False, "celery:backlog:fixer": True}


def test_system_thresholds_and_processes_become_conditions():
    cfg = load_monitors({"system": {"cpu": {"percent": 90}, "memory": {"percent": 80},
                                    "disks": [{"path": "/", "percent": 95}],
                                    "processes": [{"name": "postgres"}]}}).system
    sample = Sample(cpu=95.0, memory=50.0, disks={"/": None}, processes={"postgres": (False, "0 process(es)")})
    obs = {o.key: o for o in observations(cfg, sample, "h1")}
    assert obs["system:h1:cpu"].failing and not obs["system:h1:memory"].failing
    assert obs["system:h1:disk:/"].failing and "cannot be read" in obs["system:h1:disk:/"].detail
    assert obs["system:h1:process:postgres"].failing
    assert obs["system:h1:cpu"].event.dedup_key == "system:h1:cpu"
