"""Recovery resolves: an escalated probe incident is resolved by the monitor when the probe passes again,
the resolver writes its report and everyone notified gets a resolved notification through the same
channel, as Alertmanager's resolved notifications do. Stage bodies and the sweeper against real Postgres;
the probe's HTTP result is injected."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from erdu_tasks.fixer.checks import CheckResult
from erdu_tasks.monitors import http_probe
from erdu_tasks.monitors.config import load_monitors
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings
from erdu_tasks.store import incidents as store
from erdu_tasks.tasks import pipeline
from tests.integration.escalation_support import db, endpoints, redis_client, t0  # noqa: F401 (fixtures)
from tests.integration.escalation_support import escalate, make_escalator, timeline_whats, webhook

FAIL = CheckResult(False, "GET http://orders/health returned 503, expected [200]", 0.01,
                   {"status": 503, "failure": "status"})
PASS = CheckResult(True, "GET http://orders/health returned 200 in 0.010s", 0.01, {"status": 200})


def probes(resolve_on_recovery: bool = True):
    return load_monitors({"probes": {"checks": [{
        "name": "orders-health", "url": "http://127.0.0.1:9/health", "failures": 1, "expect_status": [200],
        "service": "orders", "resolve_on_recovery": resolve_on_recovery}]}}).probes


def run(cfg, rt, result, resolved):
    decisions = http_probe.run_probes(cfg, rt.db, rt, lambda i: None, host="h", now=lambda: datetime.now(timezone.utc),
                                      runner=lambda probe: result, resolved=resolved.append)
    return decisions[0]


def test_an_escalated_probe_incident_is_resolved_when_the_probe_passes_and_everyone_notified_is_told(
        db, endpoints, redis_client, t0, tmp_path):
    rt = Runtime(load_settings(reports_dir=tmp_path / "reports"), db=db)
    esc = make_escalator(db, {"channels": {"page": webhook(endpoints, "/page")},
                              "policies": {"default": [{"channels": ["page"]}]}}, redis=redis_client)
    cfg, resolved = probes(), []
    incident_id = run(cfg, rt, FAIL, resolved).condition.incident_id
    with db.transaction() as conn:
        escalate(conn, incident_id, now=t0, reason="no runbook covers it")
    esc.sweep(t0)
    assert [r.json["kind"] for r in endpoints.at("/page")] == ["trigger"]

    assert run(cfg, rt, PASS, resolved).verdict.value == "recovered"
    assert resolved == [incident_id]
    with db.transaction() as conn:
        incident = store.get_incident(conn, incident_id, for_update=True)
        assert incident.status.value == "resolved" and incident.resolved_by == "monitor:probe:orders-health"
        assert pipeline.close_incident(conn, rt, incident, "resolver-1")
    report = (tmp_path / "reports" / f"{incident_id}.md").read_text()
    assert "monitor:probe:orders-health" in report
    assert any(w.startswith("resolve notice queued for page") for w in timeline_whats(db, incident_id))

    esc.sweep(t0 + timedelta(minutes=30))   # the notice is due at the real clock
    kinds = [(r.json["incident_id"], r.json["kind"]) for r in endpoints.at("/page")]
    assert kinds == [(incident_id, "trigger"), (incident_id, "resolve")]
    assert run(cfg, rt, PASS, resolved).verdict.value == "ok" and resolved == [incident_id]   # once


def test_a_probe_set_not_to_resolve_only_records_the_recovery(db, t0, tmp_path):
    rt = Runtime(load_settings(reports_dir=tmp_path / "reports"), db=db)
    cfg, resolved = probes(resolve_on_recovery=False), []
    incident_id = run(cfg, rt, FAIL, resolved).condition.incident_id
    with db.transaction() as conn:
        escalate(conn, incident_id, now=t0)
    assert run(cfg, rt, PASS, resolved).verdict.value == "recovered"
    assert resolved == []
    with db.transaction() as conn:
        assert store.get_incident(conn, incident_id).status.value == "escalated"
    assert any(w.startswith("recovered:") for w in timeline_whats(db, incident_id))


def test_a_recovery_leaves_an_incident_that_erdu_is_still_working_on_to_its_stage(db, t0, tmp_path):
    rt = Runtime(load_settings(reports_dir=tmp_path / "reports"), db=db)
    cfg, resolved = probes(), []
    incident_id = run(cfg, rt, FAIL, resolved).condition.incident_id
    with db.transaction() as conn:
        conn.execute("UPDATE incidents SET status = 'fixing' WHERE id = %s", (incident_id,))
    assert run(cfg, rt, PASS, resolved).verdict.value == "recovered"
    assert resolved == []   # the fixer's own validation decides
