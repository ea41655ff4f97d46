"""The chaos suite's compact subset: one lab (bench/chaos.py: two supervised Python services under a private
Debian supervisord, a cache Redis, a spool, ERDU as `erdu worker all` + `erdu beat` with the operator's own
runbooks) and three of its ten faults. bench/chaos.py runs all ten and prints the figures.

- killed: found by the probe, restarted through supervisorctl, validated, and the service answers again;
- cache poisoned: found in the log, the cache cleared, healed as the bench's own /ready check sees it;
- an error no runbook covers: escalated with no action and no false root cause.
And the pid lookup the capture uses for a supervisor program (supervisord's XML-RPC socket) gives the pid
of the process supervisord runs."""

from __future__ import annotations

import shutil

import httpx
import pytest

from bench.chaos import FAULTS, ChaosLab, run_fault
from erdu_tasks.fixer import capture

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chaos-lab"),
              pytest.mark.skipif(shutil.which("supervisord") is None, reason="supervisor is not installed")]

FAULT = {f.name: f for f in FAULTS}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with ChaosLab(tmp_path_factory.mktemp("chaos")) as running:
        yield running


def test_the_capture_finds_a_supervisor_programs_pid_as_supervisord_knows_it(lab):
    served = httpx.get(f"http://127.0.0.1:{lab.ports['api']}/health", timeout=2).json()["pid"]
    pid, how, tried = capture.find_pid({"supervisor": "api", "supervisor_conf": str(lab.conf)}, capture._Clock(5))
    assert (pid, how, tried) == (served, "supervisor program api", [])
    assert lab.pid("api") == served   # the same answer supervisorctl gives
    found = capture.capture_service("api", {"supervisor": "api", "supervisor_conf": str(lab.conf)},
                                    log_files=[str(lab.log("api"))], before="restart")
    assert found["process"]["pid"] == served
    assert found["thread_dump"]["ok"] is False or "serve_forever" in found["thread_dump"]["text"]


def test_a_killed_service_is_restarted_through_supervisor_and_validated(lab):
    before = lab.pid("api")
    lab.settle(holds_of=("api",))
    result = run_fault(lab, FAULT["killed"])
    assert result.healed_validated, result
    assert result.actions == ["restart-when-down:restart"] and not result.harmful_or_needless
    assert lab.pid("api") not in (None, before) and lab.ready("api")
    assert result.mttr_s is not None and result.mttr_s < 30


def test_a_poisoned_cache_is_cleared_and_an_uncovered_error_gets_no_action(lab):
    lab.settle()
    poisoned = run_fault(lab, FAULT["cache_poisoned"])
    assert poisoned.healed_validated and poisoned.diagnosis_right, poisoned
    assert poisoned.actions == ["clear-poisoned-cache:clear_cache"]
    lab.settle()
    uncovered = run_fault(lab, FAULT["uncovered_error"])
    assert uncovered.diagnosis_right, uncovered     # escalated, nothing ran, no false cause sent
    assert uncovered.actions == [] and uncovered.false_root_causes == []
    statuses = {r["status"] for r in lab.query("SELECT status FROM incidents WHERE id = ANY(%s)",
                                              (uncovered.incidents,))}
    assert statuses == {"escalated"}
