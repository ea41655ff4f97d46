"""One typed settings object, built once from the environment (ERDU_*) and an optional erdu.yaml.

Every key is a typed field, sections included (erdu_tasks/settings/*.py):
an unknown or misplaced key is refused at start-up with its dotted path, so nothing is accepted and then
ignored. A section may also be given as JSON in one variable (ERDU_MONITORS='{"logs": ...}') or key by key
(ERDU_BRAIN__API_KEY).
"""

from __future__ import annotations

import os
from functools import lru_cache
from urllib.parse import unquote, urlsplit
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from erdu_tasks.errors import ConfigError, config_error
from erdu_tasks.names import ROLES
from erdu_tasks.redisconn import is_sentinel, parse_sentinel
from erdu_tasks.settings.common import Dsn, DsnStr, RunbookHost, mask_url
from erdu_tasks.settings.escalation import EscalationConfig
from erdu_tasks.settings.heartbeats import HeartbeatsConfig
from erdu_tasks.settings.monitors import MonitorsConfig
from erdu_tasks.settings.people import People, check_people
from erdu_tasks.settings.retention import RetentionConfig
from erdu_tasks.settings.schedules import OncallConfig
from erdu_tasks.settings.roles import BrainConfig, CommanderConfig, LearningConfig
from erdu_tasks.settings.servers import ApiSection, FlowerSection
from erdu_tasks.settings.slack import SlackSection

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/erdu"

_SECTIONS = frozenset({"monitors", "escalation", "commander", "learning", "brain", "api", "flower", "heartbeats", "people",
                       "retention", "slack", "oncall"})


def _config_file() -> Path | None:
    explicit = os.environ.get("ERDU_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"ERDU_CONFIG points at {path}, which is not a file")
        return path
    local = Path("erdu.yaml")
    return local if local.is_file() else None


class Settings(BaseSettings):
    """Everything ERDU can be told, every section typed."""

    model_config = SettingsConfigDict(env_prefix="ERDU_", env_nested_delimiter="__", extra="forbid")

    # Connection URLs: their passwords are masked in every repr (settings.Dsn).
    redis_url: Dsn = DsnStr(DEFAULT_REDIS_URL)
    database_url: Dsn = DsnStr(DEFAULT_DATABASE_URL)
    reports_dir: Path = Path("var/reports")
    alerts_dir: Path = Path("var/alerts")
    state_dir: Path = Path("var")
    rules_file: Path | None = None
    runbooks_dir: Path | None = None
    catalog_file: Path | None = None

    # Celery and pipeline timing.
    visibility_timeout: int = Field(default=300, ge=30, le=3600)
    # A stage not moved for this long is re-driven by the reconciler, which runs every interval: together
    # they bound how long work a lost host held waits (deadline + interval, then one stage's run), which
    # is what keeps every incident final within a minute of a host's death. The visibility timeout only
    # returns the dead host's copies later, to be found already done (README: several hosts).
    stage_deadline_seconds: float = Field(default=20.0, gt=0)
    reconcile_interval_seconds: float = Field(default=5.0, gt=0)
    # Beat's singleton lock: renewed every beat tick (a fifth of it), so a standby beat takes over within
    # this many seconds (plus one tick) after the active one dies.
    beat_lock_seconds: int = Field(default=6, ge=3, le=300)
    max_worker_crashes: int = Field(default=3, ge=1)
    # A worker that takes no waiting work this long reconnects to the broker (consumer_guard.py); 0 turns it off.
    consumer_stall_seconds: float = Field(default=30.0, ge=0)
    task_max_retries: int = Field(default=8, ge=0)
    retry_backoff_max: float = Field(default=60.0, gt=0)
    # Postgres connections per worker process. Unset, `erdu worker` sizes it from the pool: a thread
    # pool of N gets N + 1 (a thread each, and one for the process's own checks), a prefork child 2.
    db_pool_max: int = Field(default=4, ge=1)
    # False behind PgBouncer in transaction mode (before 1.21), which cannot keep prepared statements.
    db_prepared_statements: bool = True

    dry_run: bool = False
    # Hosts an incident's {host} / {service} may aim a runbook URL at, besides the catalog's `hosts:`
    # (names, IP addresses, networks like 10.0.3.0/24); every other host is refused.
    runbook_hosts: list[RunbookHost] = Field(default_factory=list)
    # Let runbook requests reach link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10, ...).
    runbook_allow_link_local: bool = False
    approval_deadline_seconds: float = Field(default=3600.0, gt=0)   # then a parked fix is escalated
    flap_window_seconds: float = Field(default=3600.0, ge=0)   # a recurrence within it links to the last incident
    # Bearer tokens of the HTTP API (ERDU_API_TOKEN writes and reads, ERDU_API_READ_TOKEN only reads).
    # Secrets (SecretStr): shown as '**********' in every repr, read with .get_secret_value().
    api_token: SecretStr | None = None
    api_read_token: SecretStr | None = None
    cache_redis_url: Dsn | None = None   # the Redis that clear_cache runbooks act on; never the broker by default
    worker_concurrency: dict[str, Annotated[int, Field(ge=1)]] = Field(default_factory=dict)   # role -> processes

    # The sections; each model documents its keys.
    monitors: MonitorsConfig = Field(default_factory=MonitorsConfig)
    escalation: EscalationConfig = Field(default_factory=EscalationConfig)
    commander: CommanderConfig = Field(default_factory=CommanderConfig)
    learning: LearningConfig = Field(default_factory=LearningConfig)
    brain: BrainConfig = Field(default_factory=BrainConfig)
    api: ApiSection = Field(default_factory=ApiSection)
    flower: FlowerSection = Field(default_factory=FlowerSection)
    heartbeats: HeartbeatsConfig = Field(default_factory=HeartbeatsConfig)
    people: People = Field(default_factory=dict)   # settings/people.py
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    slack: SlackSection = Field(default_factory=SlackSection)   # settings/slack.py: interactivity
    oncall: OncallConfig = Field(default_factory=OncallConfig)   # settings/schedules.py

    @field_validator("people")
    @classmethod
    def _person_names(cls, value: People) -> People:
        return check_people(value)

    @field_validator("redis_url", "cache_redis_url")
    @classmethod
    def _sentinel_url_parses(cls, value: str | None) -> str | None:
        if value is not None and is_sentinel(value):
            parse_sentinel(value)   # ValueError saying what is wrong, at start-up
        return value

    @field_validator("worker_concurrency")
    @classmethod
    def _known_roles(cls, value: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(value) - set(ROLES))
        if unknown:
            raise ValueError(f"unknown role(s) {', '.join(unknown)}; roles are: {', '.join(ROLES)}")
        return value

    @model_validator(mode="after")
    def _beat_watch_outlasts_a_reconcile_interval(self) -> "Settings":
        max_age = self.heartbeats.beat.max_age
        if max_age is not None and max_age.total_seconds() <= self.reconcile_interval_seconds:
            raise ValueError(f"heartbeats.beat.max_age ({max_age.total_seconds():g} s) must be longer than "
                             f"reconcile_interval_seconds ({self.reconcile_interval_seconds:g} s): the reconciler's "
                             "pass is what shows beat is alive")
        return self

    @model_validator(mode="after")
    def _notifications_link_to_the_console(self) -> "Settings":
        # Without a url_template of its own, every notification links to the incident's console page.
        if self.escalation.url_template is None:
            base = self.api.console_url().replace("{", "{{").replace("}", "}}")
            self.escalation = self.escalation.model_copy(update={"url_template": base + "/incidents/{incident_id}"})
        return self

    @model_validator(mode="after")
    def _oncall_references(self) -> "Settings":
        # Schedules, escalation levels and contact channels name people, schedules and channels of other sections.
        self.oncall.check_people(self.people)
        self.oncall.check_contact_channels(self.escalation.channels)
        self.escalation.check_targets(self.oncall.schedules, self.people)
        return self

    @model_validator(mode="before")
    @classmethod
    def _no_empty_sections(cls, data: Any) -> Any:
        # `monitors:` with nothing under it is YAML null: the same as leaving the section out.
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if not (k in _SECTIONS and v is None)}
        return data

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


def secret_value(value: SecretStr | str | None) -> str | None:
    """The plain text of a secret setting (None or empty: None)."""
    if value is None:
        return None
    text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
    return text or None


def secret_values(settings: Any) -> list[str]:
    """Every secret the settings hold (tokens, keys, passwords, webhook URLs, URL passwords), as text,
    for the log redactor."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            if value.get_secret_value():
                found.append(value.get_secret_value())
        elif isinstance(value, DsnStr):
            try:
                password = urlsplit(str.__str__(value)).password
            except ValueError:
                password = None
            if password:
                found.extend({password, unquote(password)})
            if mask_url(str.__str__(value)) != str.__str__(value):
                found.append(str.__str__(value))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name, None))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(settings)
    return found


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation errors into one readable ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        where = _config_file()
        source = f"environment ERDU_* and {where}" if where else "environment ERDU_*"
        raise config_error(exc, f"settings ({source})") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, built on first use."""
    return load_settings()


__all__ = ["ApiSection", "BrainConfig", "CommanderConfig", "DEFAULT_DATABASE_URL", "DEFAULT_REDIS_URL", "DsnStr",
           "EscalationConfig", "FlowerSection", "HeartbeatsConfig", "LearningConfig", "MonitorsConfig", "OncallConfig", "Settings",
           "SlackSection",
           "get_settings", "load_settings", "secret_value", "secret_values"]
