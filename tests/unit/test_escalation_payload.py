"""What a responder receives, built from the real shape of the fixer's records; the section split."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import re

import pytest

from erdu_tasks.errors import ConfigError
from erdu_tasks.catalog import Catalog, Service
from erdu_tasks.escalation.runs import (
    attempted_fixes,
    build_notification,
    check_settings,
    escalation_config,
    sweep_options,
)
from erdu_tasks.model import Incident, Severity, Status
from erdu_tasks.escalation.channels import NotificationKind

T0 = datetime(2025, 3, 3, 12, 0, tzinfo=timezone.utc)
FIX = {
    "runbook": "restart-db",
    "attempt": 1,
    "actions": [
        {"step": "1:action:0", "action": "restart", "ok": True, "detail": "exit 0", "duration": 1.2,
         "output": {"argv": ["systemctl", "restart", "orders-db"], "exit_code": 0, "stdout": "", "stderr": ""},
         "reused": False},
        {"step": "1:action:1", "action": "run_command", "ok": False, "detail": "exit 1", "duration": 0.1,
         "output": {"exit_code": 1, "stderr": "pg_isready: no response\nretrying"}, "reused": True},
    ],
    "validation": {"ok": False, "detail": "check http://db/health: HTTP 503", "duration": 0.2},
    "rollback": [{"step": "1:rollback:0", "action": "noop", "ok": True, "detail": "rolled back", "duration": 0,
                  "output": {}, "reused": False}],
}


def incident(**kw) -> Incident:
    base = dict(id="INC-20250303120000-00000001", fingerprint="fp", title="Database connection failed",
                description="", severity=Severity.P1, status=Status.ESCALATED, source="test", service="orders-db",
                affected_services=["orders-db", "checkout"], root_cause="connection pool exhausted", fix=FIX,
                resolution_actions=FIX["actions"], occurrences=7)
    base.update(kw)
    return Incident(**base)


def test_attempted_fixes_carry_runbook_steps_outputs_validation_and_rollback():
    fixes = attempted_fixes(incident())
    assert [f.action for f in fixes] == ["restart-db: restart", "restart-db: run_command", "restart-db: validation",
                                         "restart-db: rollback noop"]
    assert [f.ok for f in fixes] == [True, False, False, True]
    assert 'argv: ["systemctl", "restart", "orders-db"]' in fixes[0].output
    assert "stderr:\n  pg_isready: no response\n  retrying" in fixes[1].output
    assert "not run again" in fixes[1].output
    assert fixes[2].output == "check http://db/health: HTTP 503"


def test_without_a_fix_record_the_resolution_actions_are_used():
    fixes = attempted_fixes(incident(fix={}))
    assert [f.action for f in fixes] == ["restart", "run_command"]


def test_the_notification_has_what_a_responder_needs():
    config = escalation_config({"see_command": "erdu incidents show {incident_id}",
                                "url_template": "https://erdu.example/i/{incident_id}"}, "alerts")
    n = build_notification(config, incident(), reason="runbook restart-db did not fix it", level=2, repeat=1,
                           kind=NotificationKind.TRIGGER, now=T0)
    data = n.to_dict()
    assert data["title"] == "Database connection failed" and data["severity"] == "P1"
    assert data["reason"] == "runbook restart-db did not fix it"
    assert data["affected_services"] == ["orders-db", "checkout"]
    assert data["root_cause"] == "connection pool exhausted"
    assert data["attempted_fixes"][1]["ok"] is False and "pg_isready" in data["attempted_fixes"][1]["output"]
    assert data["see"] == {"command": "erdu incidents show INC-20250303120000-00000001",
                           "url": "https://erdu.example/i/INC-20250303120000-00000001"}
    assert (data["level"], data["repeat"]) == (2, 1)


def test_the_sweeper_keys_are_part_of_the_typed_section():
    section = {"sweep_interval": "2s", "stuck_after": "off", "inhibit": [], "channels": {"file": {}}}
    assert escalation_config(section, "alerts").channels["file"].type == "file"
    options = sweep_options(section)
    assert options.sweep_interval == 2.0 and options.stuck_after is None
    assert sweep_options({}).stuck_after == timedelta(minutes=15)
    with pytest.raises(ConfigError, match="escalation.sweep_interval"):
        sweep_options({"sweep_interval": "soon"})


def test_the_approval_deadline_is_refused_in_the_section_naming_the_top_level_key():
    with pytest.raises(ConfigError, match=r"escalation\.approval_deadline_seconds: .*top level"):
        sweep_options({"approval_deadline_seconds": 60})


@pytest.mark.parametrize(("section", "message"), [
    ({"channels": {"pd": {"type": "pagerduty"}}}, "routing_key"),
    ({"policies": {"P1": [{"channels": ["nowhere"]}]}}, "undefined channel"),
    ({"inhibit": [{"targets": 3}]}, "escalation.inhibit.0.targets"),
    ({"stuck_after": "later"}, "escalation.stuck_after"),
    ({}, "unknown escalation policies"),
])
def test_a_wrong_section_fails_at_start_up_naming_the_place(section, message):
    catalog = Catalog([Service(name="db", escalation_policy="db-oncall" if not section else None)])
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_settings(SimpleNamespace(escalation=section, alerts_dir="alerts"), catalog)


def test_a_right_section_passes():
    check_settings(SimpleNamespace(escalation={"named_policies": {"db-oncall": {"P1": [{"channels": ["file"]}]}},
                                               "sweep_interval": "2s"}, alerts_dir="alerts"),
                   Catalog([Service(name="db", escalation_policy="db-oncall")]))
