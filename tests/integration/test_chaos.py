"""The chaos suite's compact subset: one lab (bench/chaos.py: two supervised Python services under a private
Debian supervisord, a cache Redis, a spool, ERDU as `erdu worker all` + `erdu beat` with the operator's own
runbooks) and two of its ten faults. bench/chaos.py runs all ten and prints the figures.

- killed: found by the probe, restarted through supervisorctl, validated, and the service answers again;
- cache poisoned: found in the log (api and web share the cache: one incident, from whichever logs it first),
  the cache cleared, healed as the bench's own /ready check sees it on both.
(The uncovered error, the stale line, the silence and the crash loop run in the bench only.) And the pid lookup the capture uses for a supervisor program (supervisord's XML-RPC socket) gives the pid
of the process supervisord runs."""

from __future__ import annotations

import shutil

import httpx
import pytest

from bench.chaos import FAULTS, ChaosLab, run_fault
from erdu_tasks.fixer import capture

pytestmark = pytest.mark.slow

FAULT = {f.name: f for f in FAULTS}


def check_the_supervisor_pid_lookup(lab: ChaosLab) -> None:
    served = httpx.get(f"http://127.0.0.1:{lab.ports['api']}/health", timeout=2).json()["pid"]
    pid, how, tried = capture.find_pid({"supervisor": "api", "supervisor_conf": str(lab.conf)}, capture._Clock(5))
    assert (pid, how, tried) == (served, "supervisor program api", [])
    assert lab.pid("api") == served   # the same answer supervisorctl gives
    found = capture.capture_service("api", {"supervisor": "api", "supervisor_conf": str(lab.conf)},
                                    log_files=[str(lab.log("api"))], before="restart")
    assert found["process"]["pid"] == served
    assert found["thread_dump"]["ok"] is False or "serve_forever" in found["thread_dump"]["text"]


def check_a_killed_service_is_restarted_through_supervisor_and_validated(lab: ChaosLab) -> None:
    before = lab.pid("api")
    result = run_fault(lab, FAULT["killed"], grace=1.0)
    assert result.healed_validated, result
    assert result.actions == ["restart-when-down:restart"] and not result.harmful_or_needless
    assert lab.pid("api") not in (None, before) and lab.ready("api")
    assert result.mttr_s is not None and result.mttr_s < 30


def check_a_poisoned_cache_is_cleared_and_healed_as_the_service_itself_sees_it(lab: ChaosLab) -> None:
    lab.settle()
    poisoned = run_fault(lab, FAULT["cache_poisoned"], grace=1.0)
    assert poisoned.healed_validated and poisoned.diagnosis_right, poisoned
    # api and web read the one cache: one clear, or one per service when the second's line comes after the
    # first incident closed (then it is an incident of its own); never anything else.
    assert set(poisoned.actions) == {"clear-poisoned-cache:clear_cache"} and len(poisoned.actions) <= 2, poisoned
    assert not poisoned.false_root_causes and not poisoned.harmful_or_needless


@pytest.mark.slow(17)
def test_the_chaos_lab_heals_a_killed_and_a_poisoned_service(tmp_path):
    """One lab, one test: the faults share its supervisord, its services and its ERDU processes."""
    if shutil.which("supervisord") is None:
        pytest.skip("supervisor is not installed (make debs)")
    with ChaosLab(tmp_path / "lab") as lab:
        check_the_supervisor_pid_lookup(lab)
        check_a_killed_service_is_restarted_through_supervisor_and_validated(lab)
        check_a_poisoned_cache_is_cleared_and_healed_as_the_service_itself_sees_it(lab)
