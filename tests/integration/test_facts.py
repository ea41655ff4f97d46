"""The person paged gets the facts: a report from the first escalation on, and notifications on every channel
that carry the first occurrence (message, host, labels, traceback head) and link to the incident's console page."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from erdu_tasks.escalation.channels import build_channel
from erdu_tasks.escalation.channels.email import build_message
from erdu_tasks.escalation.channels.pagerduty import trigger_body
from erdu_tasks.escalation.channels.slack import slack_payload
from erdu_tasks.escalation.runs import build_notification
from erdu_tasks.escalation.start import escalate
from erdu_tasks.ingest.accept import accept
from erdu_tasks.model import Event
from erdu_tasks.escalation.channels import NotificationKind
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings
from erdu_tasks.store import incidents as store
from erdu_tasks.tasks import people
from erdu_tasks.tasks.pipeline import current_report

TRACEBACK = ("Disk full on /var/lib/pg/data: wrote 0 of 8192 bytes\n"
             "Traceback (most recent call last):\n"
             '  File "/srv/app/store.py", line 41, in flush\n'
             "    os.write(fd, page)\n"
             "OSError: [Errno 28] No space left on device")


@pytest.fixture()
def rt(fresh_database_url, tmp_path):
    runtime = Runtime(load_settings(
        database_url=fresh_database_url, reports_dir=tmp_path / "reports", alerts_dir=tmp_path / "alerts",
        api={"public_url": "https://erdu.example.com/"},
        escalation={"channels": {"file": {"type": "file", "dir": str(tmp_path / "alerts")}}}))
    yield runtime
    runtime.db.close()


def escalated_incident(rt: Runtime) -> str:
    event = Event(source="api", message=TRACEBACK, service="orders-db", host="db-7",
                  labels={"region": "eu-west-1", "disk": "/dev/nvme1"})
    (incident_id,) = accept(rt.db, [event], rt).new_incidents
    with rt.db.transaction() as conn:
        incident = store.get_incident(conn, incident_id, for_update=True)
        assert escalate(conn, incident, reason="no runbook matches", stage="fix", actor="fixer", worker="test")
    return incident_id


def test_an_escalated_incident_has_a_report_of_what_is_known_so_far_that_follows_it(rt):
    with rt.db.transaction() as conn:
        assert current_report(conn, rt, "INC-19990101000000-nothere") is None
    incident_id = escalated_incident(rt)
    with rt.db.transaction() as conn:
        data, markdown = current_report(conn, rt, incident_id)
    assert data["final"] is False
    assert "what we know so far" in markdown.lower()
    assert "Escalated because: no runbook matches" in markdown
    assert "not yet acknowledged" in markdown and "Root cause: not yet known" in markdown
    assert "/var/lib/pg/data" in markdown and "db-7" in markdown and "region=eu-west-1" in markdown
    assert "OSError: [Errno 28] No space left on device" in markdown

    people.act(rt, "ack", incident_id, "alice", "looking at the disk")
    with rt.db.transaction() as conn:
        _, later = current_report(conn, rt, incident_id)
    assert "acknowledged by alice" in later and "not yet acknowledged" not in later


def test_every_channel_carries_the_first_occurrence_and_links_to_the_console(rt, tmp_path):
    incident_id = escalated_incident(rt)
    with rt.db.transaction() as conn:
        incident = store.get_incident(conn, incident_id)
    n = build_notification(rt.settings.escalation, incident, reason="no runbook matches", level=1, repeat=0,
                           kind=NotificationKind.TRIGGER, now=datetime.now(timezone.utc))
    url = f"https://erdu.example.com/incidents/{incident_id}"
    assert n.title != n.message and "<*>" in n.title       # the template, and beside it the concrete text

    channel = build_channel("file", rt.settings.escalation.channels["file"])
    assert channel.send(n).ok
    (written,) = (tmp_path / "alerts").glob(f"{incident_id}*.json")
    payload = json.loads(written.read_text())
    assert payload["see"]["url"] == url
    assert payload["first_occurrence"] == {
        "message": "Disk full on /var/lib/pg/data: wrote 0 of 8192 bytes", "host": "db-7",
        "labels": {"disk": "/dev/nvme1", "region": "eu-west-1"},
        "traceback": TRACEBACK.splitlines()[1:]}
    assert json.loads(n.to_json_bytes())["first_occurrence"] == payload["first_occurrence"]   # the webhook body

    slack = json.dumps(slack_payload(n))
    pd = trigger_body(n, "routing-key")
    mail = build_message(n, rt.settings.escalation.model_validate(
        {"channels": {"mail": {"type": "email", "host": "127.0.0.1", "sender": "erdu@example.com",
                               "recipients": ["oncall@example.com"]}}}).channels["mail"])
    body = mail.get_content()
    for text in (slack, json.dumps(pd), body):
        assert "/var/lib/pg/data" in text and "db-7" in text and "eu-west-1" in text, text
        assert "No space left on device" in text and url in text, text
    assert pd["client_url"] == url and "/var/lib/pg/data" in pd["payload"]["summary"]
    assert "/var/lib/pg/data" in mail["Subject"]


def test_without_a_console_address_the_file_channel_writes_no_null_url(fresh_database_url, tmp_path):
    runtime = Runtime(load_settings(database_url=fresh_database_url, alerts_dir=tmp_path / "alerts",
                                    escalation={"channels": {"file": {"type": "file"}}}))
    try:
        incident_id = escalated_incident(runtime)
        with runtime.db.transaction() as conn:
            incident = store.get_incident(conn, incident_id)
    finally:
        runtime.db.close()
    n = build_notification(runtime.settings.escalation, incident, reason="r", level=1, repeat=0,
                           kind=NotificationKind.TRIGGER, now=datetime.now(timezone.utc))
    assert n.to_dict()["see"]["url"] == f"http://127.0.0.1:8080/incidents/{incident_id}"
    assert "null" not in json.dumps(n.to_dict()["see"])
