"""`erdu rules ls`: every built-in and user rule with its file and line and whether it is in force."""

from __future__ import annotations

import textwrap
from importlib import resources

from typer.testing import CliRunner

from erdu_tasks.cli.main import app
from erdu_tasks.ingest.detect.rules import BUILTIN_FILE, RuleSet


def user_rules(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent("""
        disable: [timeout-error]
        rules:
          - name: payments-declined
            match: {message: 'payment.*declined', service: '^checkout$'}
            severity: P2
            tags: [payments]
          - name: out-of-memory
            match: {message: 'OOMKilled'}
            severity: P1
    """))
    return path


def test_the_listing_has_every_rule_with_file_line_and_state(tmp_path):
    path = user_rules(tmp_path)
    rows = {rule.name + "@" + rule.file: (rule, state) for rule, state in RuleSet.listing(path)}
    declined, state = rows[f"payments-declined@{path}"]
    assert (declined.line, state, declined.effect()) == (4, "active", "P2; tags payments")
    assert declined.summary == "message ~ /payment.*declined/ and service ~ /^checkout$/"
    assert rows[f"out-of-memory@{path}"][1] == "active"
    assert rows[f"out-of-memory@{BUILTIN_FILE}"][1] == "replaced"
    assert rows[f"timeout-error@{BUILTIN_FILE}"][1] == "disabled"
    oom = rows[f"out-of-memory@{BUILTIN_FILE}"][0]
    builtin_text = resources.files("erdu_tasks").joinpath("defaults/rules.yaml").read_text("utf-8").splitlines()
    assert "name: out-of-memory" in builtin_text[oom.line - 1]
    assert len(rows) == len(RuleSet.load().rules) + 2


def test_erdu_rules_ls_prints_them(tmp_path, monkeypatch):
    from erdu_tasks.cli.common import console

    monkeypatch.setattr(console, "width", 250)   # the console was sized when another test imported it
    result = CliRunner().invoke(app, ["rules", "ls", str(user_rules(tmp_path))], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert f"{BUILTIN_FILE}:40" in result.output and "database-connection-failed" in result.output
    assert "payments-declined" in result.output and "disabled" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - {name: x, match: {message: '('}, severity: P1}\n")
    result = CliRunner().invoke(app, ["rules", "ls", str(bad)])
    assert result.exit_code != 0 and "line 2" in result.output
