"""The Runtime: built once per process by the composition root, keeping what it builds."""

from __future__ import annotations

import shutil

from erdu_tasks import app as composition_root
from erdu_tasks import runtime as runtime_module
from erdu_tasks.fixer.runbooks import DEFAULT_RUNBOOKS_DIR
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings


def test_the_app_and_the_runtime_share_one_settings_object_and_one_runtime():
    rt = composition_root.runtime()
    assert rt is composition_root.runtime()
    assert isinstance(rt, runtime_module.Runtime)
    assert rt.settings is composition_root.app.erdu_settings


def test_what_the_runtime_builds_is_built_once():
    rt = Runtime(load_settings(commander={"busy_open_incidents": 4}))
    assert rt.commander is rt.commander and rt.commander.busy_open_incidents == 4
    assert rt.learning is rt.learning and rt.monitors is rt.monitors
    assert rt.brains is rt.brains and rt.rules is rt.rules and rt.catalog is rt.catalog
    assert rt.runbooks is rt.runbooks


def test_two_runtimes_keep_their_own_sections():
    one = Runtime(load_settings(commander={"busy_open_incidents": 4}))
    two = Runtime(load_settings(commander={"busy_open_incidents": 9}))
    assert (one.commander.busy_open_incidents, two.commander.busy_open_incidents) == (4, 9)


def test_runbooks_are_reloaded_when_a_file_changes(tmp_path):
    directory = tmp_path / "runbooks"
    shutil.copytree(DEFAULT_RUNBOOKS_DIR, directory)
    rt = Runtime(load_settings(runbooks_dir=directory))
    first = rt.runbooks
    assert rt.runbooks is first
    victim = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml"))[0]
    victim.unlink()
    assert rt.runbooks is not first and len(rt.runbooks.runbooks) < len(first.runbooks)
