"""A P1 that closes without a real repair tells its policy's first level as an FYI: the pure decision, and how
the FYI looks on the channels that must not page for it."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from erdu_tasks.escalation.channels.base import Notification, NotificationKind
from erdu_tasks.escalation.channels.file import file_stem
from erdu_tasks.escalation.channels.pagerduty import change_body, change_url
from erdu_tasks.model import Incident, Severity, Status
from erdu_tasks.roles.resolver import fyi_reason

NOOP = {"runbook": "db-verify", "actions": [{"action": "noop", "ok": True}], "validation": {"ok": True}}
RESTART = {"runbook": "db-restart", "actions": [{"action": "restart", "ok": True}], "validation": {"ok": True}}
DRY_RESTART = {**RESTART, "dry_run": True}


def incident(severity: str = "P1", fix: dict | None = None, resolved_by: str | None = "runbook:db-verify") -> Incident:
    return Incident(id="INC-20250611095900-0000abcd", fingerprint="fp", title="database connection failed",
                    description="", severity=Severity(severity), status=Status.RESOLVED, source="test",
                    service="orders", fix=fix, resolved_by=resolved_by)


CASES = [
    # (name, incident, notified, FYI expected, words in it)
    ("a P1 closed by a verify-only runbook", incident(fix=NOOP), False, True, "db-verify only verified"),
    ("a P1 resolved by its source with no action", incident(resolved_by="monitor:probe:db"), False, True,
     "monitor:probe:db with no action"),
    ("a P1 whose dry-run restart changed nothing", incident(fix=DRY_RESTART), False, True, "only verified"),
    ("a P1 really repaired", incident(fix=RESTART), False, False, None),
    ("a P1 whose people were notified (they get the resolve notice)", incident(fix=NOOP), True, False, None),
    ("a P1 resolved by a person", incident(fix=NOOP, resolved_by="person:ana"), False, False, None),
    ("a P2 closed by a verifier", incident("P2", fix=NOOP), False, False, None),
]


@pytest.mark.parametrize("name, inc, notified, expected, words", CASES, ids=[c[0] for c in CASES])
def test_who_hears_of_a_p1_closed_without_a_repair(name, inc, notified, expected, words):
    reason = fyi_reason(inc, notified=notified)
    assert (reason is not None) is expected
    if words:
        assert words in reason and reason.startswith("FYI: P1 closed without a real repair")


def test_an_fyi_is_a_change_event_on_pagerduty_and_a_file_of_its_own():
    n = Notification.from_incident(incident(fix=NOOP), reason="FYI: ...", level=1, repeat=0,
                                   kind=NotificationKind.FYI, attempted_fixes=[], see_command="erdu incidents show X",
                                   url=None, now=datetime.now(timezone.utc))
    assert n.summary().startswith("[FYI] [P1]")
    assert file_stem(n).endswith("-fyi")
    assert change_url("https://events.pagerduty.com/v2/enqueue") == "https://events.pagerduty.com/v2/change/enqueue"
    body = change_body(n, "k" * 32)
    assert "event_action" not in body and body["payload"]["summary"].startswith("[FYI]")
