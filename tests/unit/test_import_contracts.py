"""The import contracts hold, and they would catch a role that reaches for the database."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is installed by the test extras")


def lint(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_contracts_hold_for_the_tree_as_it_is():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


def test_a_role_that_imports_psycopg_breaks_the_contract(tmp_path):
    copy = tmp_path / "tree"
    copy.mkdir()
    shutil.copytree(ROOT / "erdu_tasks", copy / "erdu_tasks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "workers", copy / "workers", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    commander = copy / "erdu_tasks" / "roles" / "commander.py"
    commander.write_text(commander.read_text() + "\nimport psycopg  # a role reaching for the database\n")
    done = lint(copy)
    assert done.returncode != 0
    assert "erdu_tasks.roles is not allowed to import psycopg" in done.stdout
