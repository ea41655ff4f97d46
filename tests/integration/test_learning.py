"""Learning from history with real workers: auto-resolution of a proven fix, the fall back after a failure,
related incidents ranked by similarity, MTTA/MTTR in `erdu stats`."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from tests.conftest import incident_rows, wait_for

MESSAGE = "ERROR Widget cache corrupted for shard 7"


def runbooks_yaml(flag, record):
    return textwrap.dedent(f"""
        runbooks:
          - name: reset-widget-cache
            description: Drop the widget cache so it is rebuilt from the origin.
            match:
              title_pattern: "(?i)widget cache corrupted"
            diagnosis_hint: The widget cache holds entries written while its node was out of disk.
            actions:   # a real action: a runbook that only verifies (noop) never earns auto-resolution
              - action: run_command
                params: {{argv: ["{sys.executable}", "-c", "import sys; print('run', file=open(sys.argv[1], 'a'))",
                                 "{record}"]}}
            validation: {{check: command, argv: ["test", "-f", "{flag}"], timeout: 5}}
            limits: {{max_runs: 1000, per_seconds: 3600}}
            # The incidents below follow one another within seconds, each a new occurrence after a fix
            # that is taken to have held: no recurrence window, so none marks the fix before it failed.
            recurrence_window: 0
    """)


CATALOG = textwrap.dedent("""
    services:
      - name: widgets
        owner: team-cache
      - name: shop
        user_facing: true
        depends_on: [widgets]
""")


@pytest.fixture()
def learning_stack(stack_factory, tmp_path):
    flag = tmp_path / "fix-works"
    flag.touch()
    record = tmp_path / "runs.jsonl"
    (tmp_path / "runbooks").mkdir()
    (tmp_path / "runbooks" / "widgets.yaml").write_text(runbooks_yaml(flag, record))
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "widgets.log"
    log.write_text("\n".join([
        "2025-06-11T10:00:00Z INFO widgets: serving shard 7 from cache-2",
        "2025-06-11T10:00:01Z WARN widgets: cache-2 write failed: No space left on device",
        "2025-06-11T10:00:02Z INFO widgets: request 8812 served in 12 ms",
        f"2025-06-11T10:00:03Z {MESSAGE}",
        "2025-06-11T10:00:03Z INFO widgets: falling back to origin for shard 7",
    ]) + "\n")
    stack = stack_factory({
        "ERDU_RUNBOOKS_DIR": str(tmp_path / "runbooks"),
        "ERDU_CATALOG_FILE": str(tmp_path / "catalog.yaml"),
        "ERDU_LEARNING": json.dumps({"evidence": {"log_roots": [str(logs)]}}),
    })
    stack.start_all()
    stack.flag, stack.record, stack.log = flag, record, log
    return stack


def incidents(stack):
    return incident_rows(stack.database_url, "SELECT * FROM incidents ORDER BY created_at")


def timeline(stack, incident_id):
    return incident_rows(stack.database_url, "SELECT actor, from_status, to_status, what FROM incident_timeline"
                         " WHERE incident_id = %s ORDER BY id", (incident_id,))


def send_and_settle(stack, payload, settled=("closed",)):
    """Send one event that opens a new incident; wait until it reaches a settled status; return its row."""
    before = len(incidents(stack))
    stack.send_event(payload)
    rows = wait_for(lambda: (lambda r: r if len(r) > before else None)(incidents(stack)), 30, what="new incident")
    new_id = rows[-1]["id"]
    return wait_for(lambda: next((r for r in incidents(stack) if r["id"] == new_id and r["status"] in settled), None),
                    60, what=f"{new_id} {'/'.join(settled)}")


def widget_event(stack):
    return {"message": MESSAGE, "service": "widgets", "source": "log", "labels": {"path": str(stack.log)}}


def stats_of(stack):
    rows = incident_rows(stack.database_url, "SELECT attempts, successes, last_outcome FROM pattern_action_stats"
                         " WHERE runbook = 'reset-widget-cache'")
    return (rows[0]["attempts"], rows[0]["successes"], rows[0]["last_outcome"]) if rows else None


def diagnosed(stack, incident_id):
    return any(t["actor"] == "diagnostician" for t in timeline(stack, incident_id))


@pytest.mark.slow(19)
def test_a_proven_fix_skips_diagnosis_and_a_failure_sends_the_pattern_back_to_the_full_path(learning_stack):
    stack = learning_stack
    # Six incidents fixed by the same runbook. Defaults: >= 90 % over >= 5 attempts, so the first five
    # take the full path and the sixth is already auto-resolved.
    fixed = [send_and_settle(stack, widget_event(stack)) for _ in range(6)]
    full = fixed[:5]
    assert len({r["fingerprint"] for r in fixed}) == 1 and len({r["id"] for r in fixed}) == 6
    for row in full:
        assert diagnosed(stack, row["id"]) and row["auto_resolved"] is False
        assert row["assessment"]["decision"] == "automate" and row["resolved_by"] == "runbook:reset-widget-cache"
    assert fixed[5]["auto_resolved"] is True and not diagnosed(stack, fixed[5]["id"])
    assert stats_of(stack) == (6, 6, "success")
    assert "out of disk" in full[0]["root_cause"]
    log_lines = [line["text"] for line in full[0]["diagnosis"]["log"]["lines"]]
    assert any("No space left on device" in line for line in log_lines)      # evidence from the tailed file

    # 7th: proven 6/6 with the latest a success -> straight to the fix, no diagnosis stage.
    seventh = send_and_settle(stack, widget_event(stack))
    assert seventh["assessment"]["decision"] == "auto_fix" and seventh["auto_resolved"] is True
    assert not diagnosed(stack, seventh["id"]) and seventh["diagnosis"] == {}
    assert [t["to_status"] for t in timeline(stack, seventh["id"]) if t["to_status"]] == [
        "assigned", "fixing", "resolved", "closed"]
    assert stats_of(stack) == (7, 7, "success")
    assert len(stack.record.read_text().splitlines()) == 7                  # the fix really ran, seven times
    report = stack.erdu("incidents", "report", seventh["id"])
    assert report.returncode == 0, report.stderr
    assert "auto-resolved: no diagnosis stage" in report.stdout and "Validation: **passed**" in report.stdout
    assert "out of disk" in report.stdout                                   # root cause from the earlier ones

    # 8th: the fix stops working; the auto-fix is validated, fails, and escalates.
    stack.flag.unlink()
    eighth = send_and_settle(stack, widget_event(stack), settled=("escalated",))
    assert eighth["assessment"]["decision"] == "auto_fix" and eighth["auto_resolved"] is False
    assert any("auto-resolution; the pattern goes back to the full path" in t["what"]
               for t in timeline(stack, eighth["id"]))
    assert stats_of(stack) == (8, 7, "failure")
    done = stack.erdu("incidents", "resolve", eighth["id"], "--note", "cache node disk cleaned by hand")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: incident_rows(stack.database_url, "SELECT status FROM incidents WHERE id = %s",
                                   (eighth["id"],))[0]["status"] == "closed", 60, what="8th closed")

    # Next incident after the failing fix: the full path again, diagnosis first.
    stack.flag.touch()
    after = send_and_settle(stack, widget_event(stack))
    assert after["assessment"]["decision"] == "automate" and after["auto_resolved"] is False
    assert diagnosed(stack, after["id"])
    assert stats_of(stack) == (9, 8, "success")
    related = [r["id"] for r in after["diagnosis"]["related"]]
    assert related[0] == eighth["id"] and set(related) <= {r["id"] for r in [*fixed, seventh, eighth]}

    pattern = incident_rows(stack.database_url, "SELECT * FROM error_patterns")[0]
    assert (pattern["incidents"], pattern["resolved"], pattern["escalated"], pattern["auto_resolved"],
            pattern["human_resolved"]) == (9, 9, 1, 2, 1)
    out = stack.erdu("stats", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    row = data["by_fingerprint"][0]
    # `erdu stats` counts as Auto every resolution without a person (8 of 9), the learned shortcut or not.
    assert (row["incidents"], row["resolved"], row["escalated"], row["auto_resolved"]) == (9, 9, 1, 8)
    assert row["best_runbook"] == "reset-widget-cache" and row["mttr"] > 0
    assert sum(r["incidents"] for r in data["by_severity"]) == 9
    table = stack.erdu("stats")
    assert table.returncode == 0 and "by severity" in table.stdout and "by fingerprint" in table.stdout
    md = (stack.reports / f"{after['id']}.md").read_text()
    for text in ("## What ERDU learned", "Runbook reset-widget-cache: 8/9", "No space left on device",
                 "shop", eighth["id"]):
        assert text in md, text


def test_the_diagnostician_lists_earlier_incidents_of_a_similar_template_first(stack_factory):
    stack = stack_factory()
    stack.start_all()
    settled = ("escalated", "closed")   # no runbooks: each ends with a skill gap, escalated
    quota_a = send_and_settle(stack, {"message": "Disk quota exceeded on volume vol-17 for tenant acme",
                                      "service": "storage"}, settled)
    other = send_and_settle(stack, {"message": "Payment gateway returned status 502 for order 991",
                                    "service": "checkout"}, settled)
    quota_b = send_and_settle(stack, {"message": "Disk quota exceeded on volume vol-99 for tenant globex",
                                      "service": "backup"}, settled)
    unrelated = send_and_settle(stack, {"message": "Certificate for mail.example.org expires in 3 days",
                                        "service": "mail"}, settled)
    new = send_and_settle(stack, {"message": "Disk quota exceeded on volume vol-3 for tenant initech",
                                  "service": "archive"}, settled)
    assert len({quota_a["fingerprint"], quota_b["fingerprint"], new["fingerprint"]}) == 3
    related = new["diagnosis"]["related"]
    ids = [r["id"] for r in related]
    assert set(ids[:2]) == {quota_a["id"], quota_b["id"]}, related
    assert all(r["score"] >= 0.3 for r in related) and related == sorted(related, key=lambda r: -r["score"])
    assert other["id"] not in ids[:2] and unrelated["id"] not in ids
    assert any(f"closest {ids[0]}" in e for e in new["diagnosis"]["evidence"])
    assert [r["id"] for r in new["related"]] == ids       # searched once, at diagnosis; the resolver re-reads these
    print(json.dumps(related, indent=1))
    assert new["diagnosis"]["skill_gaps"] and "no runbook matches" in new["diagnosis"]["skill_gaps"][0]
