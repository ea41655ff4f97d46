"""Paging people with real processes: beat runs the sweeper on an `erdu worker monitor` pool, each person's
webhook contact is a local HTTP server, the acknowledgement goes through the people's ack action."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from erdu_tasks.store.db import Database
from erdu_tasks.tasks import people as people_actions
from tests.conftest import wait_for
from tests.integration.escalation_support import endpoints  # noqa: F401 (fixtures)
from tests.integration.escalation_support import escalate, new_incident, rows, timeline_whats, webhook
from tests.integration.test_escalation_workers import start_beat


def test_a_p1_pages_who_is_on_call_a_handoff_pages_the_next_person_and_their_ack_stops_the_chain(
        stack_factory, endpoints):
    t0 = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)
    handoff = t0 + timedelta(seconds=2)          # bob takes over between level 1 (t0) and level 2 (t0 + 3 s)
    people = {name: {"contacts": {"webhook": f"{endpoints.url}/{name}"}} for name in ("alice", "bob", "carol")}
    oncall = {"schedules": {"primary": {
        "layers": [{"start": (t0 - timedelta(days=1)).date().isoformat(), "rotation": "1d",
                    "participants": ["alice"]}],
        "overrides": [{"start": handoff.isoformat(), "end": (handoff + timedelta(hours=1)).isoformat(),
                       "person": "bob"}]}}}
    escalation = {"channels": {"team": webhook(endpoints, "/team")},
                  "policies": {"P1": [{"schedule": "primary", "ack_deadline": "3s"},
                                      {"schedule": "primary", "ack_deadline": "60s"},
                                      {"person": "carol"}]},
                  "sweep_interval": "1s", "stuck_after": "off"}
    stack = stack_factory({"ERDU_PEOPLE": json.dumps(people), "ERDU_ONCALL": json.dumps(oncall),
                           "ERDU_ESCALATION": json.dumps(escalation)})
    db = Database(stack.database_url)
    try:
        with db.transaction() as conn:
            incident = new_incident(conn, service="payments", severity="P1")
            escalate(conn, incident, now=t0)
        start_beat(stack)
        stack.start("monitor")
        first = wait_for(lambda: endpoints.at("/alice"), 60, what="alice paged at level 1")[0].json
        assert (first["incident_id"], first["severity"], first["level"]) == (incident, "P1", 1)
        second = wait_for(lambda: endpoints.at("/bob"), 60, what="bob paged at level 2, after the handoff")[0].json
        assert second["level"] == 2 and second["paged"] == {"person": "bob"}
        people_actions.acknowledge(SimpleNamespace(db=db), incident, "bob")    # what the CLI, API and Slack call
        # The ack stops the run at once: level 3 (carol, a minute later) is never planned.
        [run] = rows(db, "SELECT state, next_at, stopped_at FROM escalation_runs WHERE incident_id = %s", (incident,))
        assert run["state"] == "acknowledged" and run["next_at"] is None and run["stopped_at"] is not None
        assert not endpoints.at("/carol") and len(endpoints.at("/alice")) == 1
        whats = timeline_whats(db, incident)
        assert "escalation level 1: paging alice (on call on primary) via webhook" in whats
        assert "escalation level 2: paging bob (on call on primary) via webhook" in whats
        assert any(w.startswith("acknowledged by bob, who was paged (level 2, schedule primary) at ") for w in whats)
    finally:
        db.close()
