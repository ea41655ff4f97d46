"""Settings: environment and erdu.yaml, typed sections, every key read or refused, one error format."""

from __future__ import annotations

import json
import textwrap
from types import SimpleNamespace

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from erdu_tasks.api.config import api_config
from erdu_tasks.catalog import Catalog
from erdu_tasks.devstack.flower import flower_options
from erdu_tasks.errors import ConfigError, config_error
from erdu_tasks.monitors.config import load_monitors
from erdu_tasks.settings import monitors as settings_monitors
from erdu_tasks.settings import celery_apps as settings_celery_apps
from erdu_tasks.settings import roles as settings_roles
from erdu_tasks.settings import servers as settings_servers
from erdu_tasks.settings import (
    BrainConfig,
    CommanderConfig,
    EscalationConfig,
    LearningConfig,
    MonitorsConfig,
    load_settings,
)


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


def _yaml(monkeypatch, tmp_path, text):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ERDU_CONFIG", raising=False)
    (tmp_path / "erdu.yaml").write_text(textwrap.dedent(text))


@pytest.mark.parametrize("section, where", [
    ("monitors: {logz: {}}", "monitors.logz"),
    ("monitors: {logs: {files: [{path: /x.log, colour: red}]}}", "monitors.logs.files.0.colour"),
    ("escalation: {chanels: {}}", "escalation.chanels"),
    ("escalation: {channels: {f: {type: file, colour: red}}}", "escalation.channels.f.file.colour"),
    ("escalation: {inhibit: [{target: dependants}]}", "escalation.inhibit.0.target"),
    ("commander: {busy: 3}", "commander.busy"),
    ("commander: {business_hours: {tz: UTC}}", "commander.business_hours.tz"),
    ("learning: {evidence: {roots: [/var/log]}}", "learning.evidence.roots"),
    ("brain: {modle: gpt}", "brain.modle"),
    ("api: {prot: 8080}", "api.prot"),
    ("flower: {passwd: x}", "flower.passwd"),
    ("worker_concurrency: {fixr: 2}", "worker_concurrency"),
])
def test_every_section_refuses_an_unknown_key_naming_its_dotted_path(monkeypatch, tmp_path, section, where):
    _yaml(monkeypatch, tmp_path, section + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings()
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid settings (environment ERDU_* and erdu.yaml):"
    assert any(line.startswith(f"  {where}: ") for line in lines[1:]), lines


def test_the_approval_deadline_is_a_top_level_key_and_the_escalation_one_is_refused(monkeypatch, tmp_path):
    _yaml(monkeypatch, tmp_path, "approval_deadline_seconds: 60\n")
    assert load_settings().approval_deadline_seconds == 60
    _yaml(monkeypatch, tmp_path, "escalation: {approval_deadline_seconds: 60}\n")
    with pytest.raises(ConfigError, match=r"escalation\.approval_deadline_seconds: this key is not read; set "
                                          r"approval_deadline_seconds at the top level"):
        load_settings()


@pytest.mark.parametrize("key, right", [("token", "ERDU_API_TOKEN"), ("read_token", "ERDU_API_READ_TOKEN")])
def test_an_api_token_in_the_api_section_is_refused_without_echoing_it(monkeypatch, tmp_path, key, right):
    _yaml(monkeypatch, tmp_path, f"api: {{{key}: a-very-secret-value}}\n")
    with pytest.raises(ConfigError, match=rf"api\.{key}: this key is not read; set {right}") as info:
        load_settings()
    assert "a-very-secret-value" not in str(info.value)


def test_sections_are_typed_models_from_yaml_and_from_the_environment(monkeypatch, tmp_path):
    _yaml(monkeypatch, tmp_path, "escalation: {sweep_interval: 2s}\nmonitors:\n")
    monkeypatch.setenv("ERDU_COMMANDER", json.dumps({"busy_open_incidents": 4}))
    monkeypatch.setenv("ERDU_BRAIN__MODEL", "local-model")
    settings = load_settings()
    assert isinstance(settings.escalation, EscalationConfig) and settings.escalation.sweep_interval.total_seconds() == 2
    assert isinstance(settings.monitors, MonitorsConfig) and settings.monitors.logs is None   # `monitors:` = absent
    assert isinstance(settings.commander, CommanderConfig) and settings.commander.busy_open_incidents == 4
    assert settings.brain.model == "local-model" and not settings.brain.active
    assert settings.flower.port == 5555 and settings.api.port == 8080


def test_monitors_as_json_in_the_environment_fail_naming_the_key(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ERDU_CONFIG", raising=False)
    monkeypatch.setenv("ERDU_MONITORS", json.dumps({"logs": {"files": [{"path": "/x.log"}], "interval": 0}}))
    with pytest.raises(ConfigError, match=r"(?m)^  monitors\.logs\.interval: Input should be greater than 0$"):
        load_settings()
    monkeypatch.setenv("ERDU_MONITORS", json.dumps({"logs": {"files": [{"path": "/x.log"}]}}))
    assert load_settings().monitors.logs.files[0].path == "/x.log"


def _validation_error(model, data):
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return exc
    raise AssertionError("expected a validation error")


def test_one_format_for_every_config_error():
    class Inner(BaseModel):
        model_config = ConfigDict(extra="forbid")
        port: int

    class Outer(BaseModel):
        items: list[Inner]

        @field_validator("items")
        @classmethod
        def _some(cls, items):
            if len(items) > 2:
                raise ValueError("at most two")
            return items

    exc = _validation_error(Outer, {"items": [{"port": "x", "colour": "red"}]})
    message = str(config_error(exc, "things", prefix=("outer",)))
    assert message == ("invalid things:\n"
                       "  outer.items.0.port: Input should be a valid integer, unable to parse string as an integer\n"
                       "  outer.items.0.colour: Extra inputs are not permitted")
    exc = _validation_error(Outer, {"items": [{"port": 1}] * 3})
    assert str(config_error(exc, "things")) == "invalid things:\n  items: at most two"


@pytest.mark.parametrize("call, first, line", [
    (lambda: load_monitors({"probe": {}}), "invalid monitors settings:", "  monitors.probe: Extra inputs"),
    (lambda: CommanderConfig.from_section({"busy": 1}), "invalid commander settings:", "  commander.busy: Extra"),
    (lambda: LearningConfig.from_section({"related_limit": 0}), "invalid learning settings:",
     "  learning.related_limit: Input should be greater than or equal to 1"),
    (lambda: BrainConfig.from_section({"enabled": True}), "invalid brain settings:",
     "  brain: an enabled LLM brain needs base_url and model"),
    (lambda: EscalationConfig.from_settings_section({"stuck_after": "later"}), "invalid escalation settings:",
     "  escalation.stuck_after: 'later' is not a duration"),
    (lambda: flower_options({"port": 0}), "invalid flower settings:", "  flower.port: 0 is not a TCP port"),
    (lambda: api_config(SimpleNamespace(api={"port": 0}, api_token=None, api_read_token=None)),
     "invalid api settings:", "  api.port: Input should be greater than or equal to 1"),
])
def test_each_section_reports_its_errors_in_that_format(call, first, line):
    with pytest.raises(ConfigError) as info:
        call()
    lines = str(info.value).splitlines()
    assert lines[0] == first and lines[1].startswith(line), lines


def test_a_bad_service_catalog_names_the_service_and_key(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text("services:\n  - {name: db}\n  - {name: web, user_facing: maybe}\n")
    with pytest.raises(ConfigError, match=r"(?m)^  services\.1\.user_facing: Input should be a valid boolean"):
        Catalog.load(path)


@pytest.mark.parametrize("module", [settings_monitors, settings_roles, settings_servers, settings_celery_apps])
def test_the_documented_sections_are_valid_settings(module):
    doc = module.__doc__
    sections = yaml.safe_load(textwrap.dedent("\n".join(
        line for line in doc.splitlines() if line.startswith("    ") or not line.strip())))
    assert sections and load_settings(**sections)


def test_connection_urls_mask_their_password_in_every_repr_and_secrets_are_secretstr():
    from erdu_tasks.settings import load_settings, secret_values
    from erdu_tasks.settings.common import DsnStr, mask_url

    url = DsnStr("redis://erdu:p%40ss-word@127.0.0.1:6379/0")
    assert str(url) == "redis://erdu:p%40ss-word@127.0.0.1:6379/0" and url == str(url)
    assert repr(url) == repr("redis://erdu:***@127.0.0.1:6379/0") and url.masked == "redis://erdu:***@127.0.0.1:6379/0"
    assert mask_url("postgresql://postgres@127.0.0.1/erdu") == "postgresql://postgres@127.0.0.1/erdu"
    settings = load_settings(redis_url=str(url), api_token="write-token-1234", flower={"user": "u", "password": "pw-1234"})
    shown = repr(settings) + str(settings)
    assert "p%40ss-word" not in shown and "write-token-1234" not in shown and "pw-1234" not in shown
    assert settings.api_token.get_secret_value() == "write-token-1234"
    assert {"p%40ss-word", "p@ss-word", "write-token-1234", "pw-1234"} <= set(secret_values(settings))
