"""A fix counts only if it held: every check takes `stable_for`, on by default after a restart."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from pydantic import TypeAdapter

from erdu_tasks.fixer.checks import CheckSpec, run_check
from erdu_tasks.fixer.runbooks import RESTART_STABLE_FOR, Runbook


def runbook(actions, validation=None, **kw) -> Runbook:
    return Runbook.model_validate({"name": "rb", "match": {"services": ["web"]},
                                   "actions": [{"action": a, "params": p} for a, p in actions],
                                   "validation": validation, **kw})


RESTART = ("restart", {"argv": ["/bin/true"]})
NOOP = ("noop", {})
CMD = {"check": "command", "argv": ["/bin/true"]}

STABLE_CASES = [
    # (name, actions, validation, stable_for)
    ("a restart holds 5 s by default", [RESTART], CMD, RESTART_STABLE_FOR),
    ("the runbook sets its own hold", [RESTART], {**CMD, "stable_for": 12}, 12.0),
    ("the runbook may turn it off", [RESTART], {**CMD, "stable_for": 0}, 0.0),
    ("a restart among other steps", [NOOP, RESTART], CMD, RESTART_STABLE_FOR),
    ("no restart: no hold unless asked", [NOOP], CMD, 0.0),
    ("no restart, asked", [NOOP], {**CMD, "stable_for": 3}, 3.0),
    ("no check: nothing to hold", [RESTART], None, 0.0),
]


@pytest.mark.parametrize("name, actions, validation, stable", STABLE_CASES, ids=[c[0] for c in STABLE_CASES])
def test_how_long_a_runbook_check_must_hold(name, actions, validation, stable):
    assert runbook(actions, validation).stable_for == stable


def test_stable_for_is_refused_when_negative_and_recurrence_window_is_a_runbook_key():
    with pytest.raises(Exception, match="stable_for"):
        runbook([RESTART], {**CMD, "stable_for": -1})
    assert runbook([RESTART], CMD, recurrence_window=60).recurrence_window == 60


def check(raw):
    return TypeAdapter(CheckSpec).validate_python(raw)


def test_a_check_that_passes_then_fails_has_not_held(tmp_path):
    flag = tmp_path / "up"
    flag.touch()
    spec = check({"check": "command", "argv": ["test", "-f", str(flag)], "interval": 0.1})
    threading.Timer(0.4, flag.unlink).start()
    started = time.monotonic()
    result = run_check(spec, {}, stable_for=1.5)
    assert not result.ok and "passed, then failed" in result.detail and "hold for 1.5 s" in result.detail
    assert time.monotonic() - started < 1.5          # the first failure ends it
    flag.touch()
    result = run_check(spec, {}, stable_for=0.5)
    assert result.ok and "held for 0.5 s" in result.detail and result.output["stable_for"] == 0.5


def test_a_crash_loop_is_not_a_fix(tmp_path):
    """The finding: a service that dies seconds after every restart passed its check at once, 3/3 times."""
    pidfile = tmp_path / "svc.pid"
    proc = subprocess.Popen([sys.executable, "-c", f"import os, time; open({str(pidfile)!r}, 'w').write(str(os.getpid()));"
                             " time.sleep(0.6)"])
    try:
        deadline = time.monotonic() + 5
        while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        spec = check({"check": "process", "pidfile": str(pidfile), "interval": 0.2, "stable_for": 2})
        reaper = threading.Thread(target=proc.wait)
        reaper.start()   # as a service manager would: the dead process is reaped, not a zombie
        result = run_check(spec, {})
        reaper.join()
        assert not result.ok and "not running" in result.detail, result.detail
        assert "passed, then failed" in result.detail
    finally:
        proc.kill()


def test_a_window_check_is_lengthened_instead_of_re_run(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("")
    spec = check({"check": "log_absent", "path": str(log), "pattern": "boom", "window": 0.2})
    late = threading.Timer(0.35, lambda: log.write_text("boom\n"))
    late.start()
    assert run_check(spec, {}).ok                    # a 0.2 s window ends before the line comes
    late.join()
    log.write_text("")
    threading.Timer(0.35, lambda: log.write_text("boom\n")).start()
    result = run_check(spec, {}, stable_for=0.5)     # 0.2 s + the 0.5 s hold: the line is seen
    assert not result.ok and "boom" in result.detail
