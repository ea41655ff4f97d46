"""Settings: environment and erdu.yaml, one readable error for bad values."""

from __future__ import annotations

import pytest

from erdu_tasks.errors import ConfigError
from erdu_tasks.settings import load_settings


def test_defaults_work_on_a_local_machine(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for key in ("ERDU_REDIS_URL", "ERDU_DATABASE_URL", "ERDU_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    settings = load_settings()
    assert settings.redis_url.startswith("redis://127.0.0.1:6379")
    assert settings.database_url.startswith("postgresql://")


def test_erdu_yaml_is_read_and_the_environment_wins(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ERDU_CONFIG", raising=False)
    (tmp_path / "erdu.yaml").write_text("reports_dir: /srv/reports\nstage_deadline_seconds: 30\n")
    monkeypatch.setenv("ERDU_STAGE_DEADLINE_SECONDS", "45")
    settings = load_settings()
    assert str(settings.reports_dir) == "/srv/reports"
    assert settings.stage_deadline_seconds == 45


def test_a_bad_value_is_one_readable_error(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ERDU_VISIBILITY_TIMEOUT", "soon")
    with pytest.raises(ConfigError, match="visibility_timeout"):
        load_settings()


def test_an_unknown_key_in_erdu_yaml_is_refused(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ERDU_CONFIG", raising=False)
    (tmp_path / "erdu.yaml").write_text("reprots_dir: typo\n")
    with pytest.raises(ConfigError, match="reprots_dir"):
        load_settings()
