"""The `escalation` section of the settings: channels, policies, quiet hours, retries, inhibition, sweeper.

Every key is optional and an empty section means "one `file` channel writing to alerts_dir,
default deadlines":

    escalation:
      channels:                      # name -> settings; `type` defaults to the name
        file: {}                     # JSON files in alerts_dir (or `dir:`)
        oncall-slack:
          type: slack
          url: https://hooks.slack.com/services/T000/B000/XXXX
          max_per_minute: 10         # rate limit; the excess becomes one digest per minute
        pd:
          type: pagerduty
          routing_key: 0123456789abcdef0123456789abcdef
          # events_url: https://events.pagerduty.com/v2/enqueue
        ops-hook:
          type: webhook
          url: https://ops.example.com/erdu
          secret: a-long-shared-secret-for-hmac
          headers: {X-Team: sre}
        mail:
          type: email
          host: smtp.example.com
          port: 587
          security: starttls         # none | starttls | ssl
          username: erdu
          password: app-password
          sender: erdu@example.com
          recipients: [oncall@example.com]
          timeout: 10                # seconds, every channel has it (default 5)
          send_resolved: true        # every channel has it
      policies:                      # P1..P5 or `default`; missing ones use built-in defaults
        P1:
          levels:
            - channels: [pd, oncall-slack]
              ack_deadline: 5m       # go to the next level when nobody acks in time
              repeat_interval: 2m    # re-notify this level until then
            - channels: [pd, mail]
              repeat_interval: 10m   # the last level repeats until acknowledged
              max_repeats: 12
        P4:
          levels:
            - {schedule: primary, ack_deadline: 10m}        # whoever is on call then (oncall.schedules)
            - {schedule: secondary, channels: [oncall-slack], ack_deadline: 10m}
            - {person: carol}                              # a person of the `people` section
        P3: [{channels: [oncall-slack], ack_deadline: 1h}]   # a bare list of levels works too
      services:                      # per-service overrides, same keys as `policies`
        payments:
          default: [{channels: [pd]}]
      named_policies:                # what a catalog service's `escalation_policy:` names
        db-oncall:
          P1: [{channels: [pd, mail], ack_deadline: 3m}, {channels: [pd, mail, oncall-slack]}]
      quiet_hours:                   # holds back the listed severities; never P1
        timezone: Europe/Berlin
        start: "22:00"
        end: "07:00"
        severities: [P4, P5]
      retry: {max_attempts: 4, backoff_base: 2s, backoff_cap: 60s}
      inhibit:                       # see escalation/inhibition.py; absent: an open P1 inhibits its dependants
        - {source_severities: [P1], targets: dependants}
      time_intervals:                # named recurring intervals (settings/intervals.py): Alertmanager semantics
        nights: [{times: [{start_time: "22:00", end_time: "24:00"}, {start_time: "00:00", end_time: "07:00"}],
                  location: Europe/Berlin}]
      # policies and levels take `mute_during: [nights]`; silences take `active_during` (CLI --during)
      silences: {max_duration: 14d, remind_before: 15m}   # defaults 366d and 15m; remind_before "off"
      sweep_interval: 5s             # how often beat runs the sweeper
      stuck_after: 15m               # an incident stuck in a stage this long escalates ("off" never)
      sweep_batch: 200
      see_command: "erdu incidents show {incident_id}"
      url_template: "https://erdu.example.com/incidents/{incident_id}"

Durations are seconds (`90`) or units (`500ms`, `30s`, `5m`, `1h30m`, `2d`).

The approval deadline is the top-level `approval_deadline_seconds`, not a key of this section.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from zoneinfo import ZoneInfo

from pydantic import Field, SecretStr, field_validator, model_validator

from erdu_tasks.errors import ConfigError
from erdu_tasks.model import Severity
from erdu_tasks.settings.common import Duration, Section, TimeOfDay, TimeZoneName, aware, check_http_url, refused
from erdu_tasks.settings.intervals import TimeIntervalEntry, check_interval_names

_CHANNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TEMPLATE_FIELDS = {"incident_id"}
PAGERDUTY_EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"

# --------------------------------------------------------------------------- channels


class ChannelSettings(Section):
    """Settings every channel type has."""

    type: str
    send_resolved: bool = True
    max_per_minute: int = Field(default=20, ge=1, le=10_000)
    timeout: float = Field(default=5.0, gt=0, le=120)


class FileSettings(ChannelSettings):
    """Where alert files go; `dir` defaults to the settings' alerts_dir."""

    type: Literal["file"] = "file"
    dir: Path | None = None
    file_mode: int = 0o640


class WebhookSettings(ChannelSettings):
    """Where to POST, and the shared secret that signs each request."""

    type: Literal["webhook"] = "webhook"
    url: str
    secret: SecretStr = Field(min_length=16)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_http_url(value)


class SlackSettings(ChannelSettings):
    """The incoming-webhook URL (a secret: whoever has it can post to the channel)."""

    type: Literal["slack"] = "slack"
    url: SecretStr

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: SecretStr) -> SecretStr:
        try:
            check_http_url(value.get_secret_value())
        except ValueError:
            raise ValueError("must be an absolute http:// or https:// URL") from None
        return value


class PagerDutySettings(ChannelSettings):
    """The integration's routing key and, for tests or proxies, the events URL."""

    type: Literal["pagerduty"] = "pagerduty"
    routing_key: SecretStr = Field(min_length=1)
    events_url: str = PAGERDUTY_EVENTS_URL
    source: str | None = None

    @field_validator("events_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_http_url(value)


class EmailSettings(ChannelSettings):
    """SMTP server, sender and recipients."""

    type: Literal["email"] = "email"
    host: str = Field(min_length=1)
    port: int = Field(default=25, ge=1, le=65535)
    security: Literal["none", "starttls", "ssl"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    sender: str = Field(min_length=3, pattern=r"^[^\s@]+@[^\s@]+$")
    recipients: list[str] = Field(min_length=1)
    subject_prefix: str = "[ERDU]"

    @model_validator(mode="after")
    def _login_needs_both(self) -> EmailSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        for rcpt in self.recipients:
            if not re.fullmatch(r"[^\s@,]+@[^\s@,]+", rcpt):
                raise ValueError(f"recipient {rcpt!r} is not an email address")
        return self


CHANNEL_SETTINGS: dict[str, type[ChannelSettings]] = {
    "file": FileSettings,
    "webhook": WebhookSettings,
    "slack": SlackSettings,
    "pagerduty": PagerDutySettings,
    "email": EmailSettings,
}
"""Channel type name -> its settings model."""

AnyChannelSettings = Annotated[
    FileSettings | WebhookSettings | SlackSettings | PagerDutySettings | EmailSettings,
    Field(discriminator="type"),
]

# --------------------------------------------------------------------------- inhibition


class InhibitRule(Section):
    """Which open incidents inhibit which others."""

    source_severities: list[Severity] = Field(default_factory=lambda: [Severity.P1], min_length=1)
    source_services: list[str] | None = None
    targets: Literal["dependants"] | list[str] = "dependants"

    def describe(self) -> str:
        """One line for timelines."""
        sources = "/".join(s.value for s in self.source_severities)
        scope = "services that depend on it" if self.targets == "dependants" else ", ".join(self.targets)
        return f"an open {sources} incident inhibits {scope}"


DEFAULT_INHIBIT_RULES: tuple[InhibitRule, ...] = (InhibitRule(),)

# --------------------------------------------------------------------------- policies

PolicyKey = Literal["P1", "P2", "P3", "P4", "P5", "default"]


class LevelConfig(Section):
    """One escalation level: whom to notify, how long to wait for an ack, how often to repeat."""

    channels: list[str] = Field(default_factory=list)
    schedule: list[str] = Field(default_factory=list)      # oncall schedules: page whoever is on call at the level's time
    person: list[str] = Field(default_factory=list)        # people (keys of the `people` section): page them
    ack_deadline: Duration | None = None
    repeat_interval: Duration | None = None
    max_repeats: int | None = Field(default=None, ge=0)
    mute_during: list[str] = Field(default_factory=list)   # time_intervals names: this level's notifications wait

    @field_validator("schedule", "person", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _targets(self) -> LevelConfig:
        if not (self.channels or self.schedule or self.person):
            raise ValueError("a level needs channels, a schedule or a person to notify")
        return self


class PolicyConfig(Section):
    """Ordered levels for one severity (or one service and severity), the route an incident's escalation takes."""

    levels: list[LevelConfig] = Field(min_length=1, max_length=20)
    mute_during: list[str] = Field(default_factory=list)   # time_intervals names: every notification of it waits

    @model_validator(mode="before")
    @classmethod
    def _bare_list(cls, data: Any) -> Any:
        return {"levels": data} if isinstance(data, list) else data

    @model_validator(mode="after")
    def _deadlines(self) -> PolicyConfig:
        for index, level in enumerate(self.levels[:-1], start=1):
            if level.ack_deadline is None:
                raise ValueError(f"level {index} needs an ack_deadline (only the last level may go without)")
        return self


class QuietHoursConfig(Section):
    """A daily window in a timezone during which the listed severities are held back."""

    timezone: TimeZoneName = "UTC"
    start: TimeOfDay
    end: TimeOfDay
    severities: list[Severity] = Field(default_factory=lambda: [Severity.P4, Severity.P5])

    @model_validator(mode="after")
    def _sane(self) -> QuietHoursConfig:
        if self.start == self.end:
            raise ValueError("start and end are equal: the window would be empty")
        if Severity.P1 in self.severities:
            raise ValueError("quiet hours never hold back P1")
        return self

    def active(self, now: datetime) -> bool:
        """True when now falls inside the window (windows may cross midnight)."""
        local = aware(now).astimezone(ZoneInfo(self.timezone)).time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def ends_after(self, now: datetime) -> datetime:
        """The first end of the window after now (UTC)."""
        zone = ZoneInfo(self.timezone)
        local = aware(now).astimezone(zone)
        candidate = datetime.combine(local.date(), self.end, tzinfo=zone)
        if candidate <= local:
            candidate = datetime.combine(local.date() + timedelta(days=1), self.end, tzinfo=zone)
        return candidate.astimezone(timezone.utc)

    def holds(self, severity: Severity | str, now: datetime) -> bool:
        """True when a notification of this severity must wait (never for P1)."""
        sev = Severity(severity)
        return sev is not Severity.P1 and sev in self.severities and self.active(now)


class RetryConfig(Section):
    """How a failed delivery is retried before the escalation moves on."""

    max_attempts: int = Field(default=4, ge=1, le=20)
    backoff_base: Duration = timedelta(seconds=2)
    backoff_cap: Duration = timedelta(seconds=60)


_DEFAULT_TIMING: dict[Severity, list[tuple[str | None, str | None]]] = {
    # (ack_deadline, repeat_interval) per level.
    Severity.P1: [("5m", "5m"), (None, "10m")],
    Severity.P2: [("15m", "15m"), (None, "30m")],
    Severity.P3: [("1h", None), (None, "4h")],
    Severity.P4: [("4h", None)],
    Severity.P5: [("24h", None)],
}


class SilenceSettings(Section):
    """Limits and reminders of silences (`escalation.silences`)."""

    max_duration: Duration = timedelta(days=366)           # a longer silence is refused (CLI and API)
    # This long before a silence ends: a timeline note on each incident it holds, and (for a silence longer than
    # this) a reminder to its author's contacts, else to the first escalation level (escalation/sweep.py).
    remind_before: Duration | None = timedelta(minutes=15)

    @model_validator(mode="before")
    @classmethod
    def _off(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("remind_before") in (False, "off", "never"):
            data = {**data, "remind_before": None}
        return data


def default_policy(severity: Severity | str, channels: list[str]) -> PolicyConfig:
    """The built-in policy for a severity, notifying every given channel at each level."""
    levels = [
        {"channels": channels, "ack_deadline": ack, "repeat_interval": repeat}
        for ack, repeat in _DEFAULT_TIMING[Severity(severity)]
    ]
    return PolicyConfig.model_validate({"levels": levels})


def _check_template(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except ValueError as exc:
        raise ValueError(f"bad template {value!r}: {exc}") from None
    unknown = names - _TEMPLATE_FIELDS
    if unknown:
        raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; only {{incident_id}} is allowed")
    return value


class EscalationConfig(Section):
    """The `escalation` section: channels, policies, quiet hours, retries, inhibition and the sweeper."""

    KEY: ClassVar[str] = "escalation"

    channels: dict[str, AnyChannelSettings] = Field(min_length=1)
    policies: dict[PolicyKey, PolicyConfig] = Field(default_factory=dict)
    services: dict[str, dict[PolicyKey, PolicyConfig]] = Field(default_factory=dict)
    named_policies: dict[str, dict[PolicyKey, PolicyConfig]] = Field(default_factory=dict)
    quiet_hours: QuietHoursConfig | None = None
    retry: RetryConfig = Field(default_factory=RetryConfig)
    see_command: str = "erdu incidents show {incident_id}"
    url_template: str | None = None
    # None: the default rule (an open P1 inhibits the services that depend on it); []: inhibition off.
    inhibit: list[InhibitRule] | None = None
    sweep_interval: Duration = timedelta(seconds=5)
    stuck_after: Duration | None = timedelta(minutes=15)
    sweep_batch: int = Field(default=200, ge=1)
    time_intervals: dict[str, list[TimeIntervalEntry]] = Field(default_factory=dict)
    silences: SilenceSettings = Field(default_factory=SilenceSettings)
    approval_deadline_seconds: refused(
        "set approval_deadline_seconds at the top level (ERDU_APPROVAL_DEADLINE_SECONDS)")

    @model_validator(mode="before")
    @classmethod
    def _channel_types(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("stuck_after") in (False, "off", "never"):
            data["stuck_after"] = None
        channels = data.get("channels")
        if channels is None or channels == {}:
            data["channels"] = {"file": {"type": "file"}}
        elif isinstance(channels, dict):
            filled = {}
            for name, settings in channels.items():
                settings = {} if settings is None else settings
                if isinstance(settings, dict) and "type" not in settings:
                    if name not in CHANNEL_SETTINGS:
                        raise ValueError(
                            f"channel {name!r} needs a type (one of {', '.join(CHANNEL_SETTINGS)})"
                        )
                    settings = {**settings, "type": name}
                filled[name] = settings
            data["channels"] = filled
        return data

    @field_validator("see_command", "url_template")
    @classmethod
    def _templates(cls, value: str | None) -> str | None:
        return _check_template(value)

    @model_validator(mode="after")
    def _references(self) -> EscalationConfig:
        for name in self.channels:
            if not _CHANNEL_NAME.fullmatch(name):
                raise ValueError(f"channel name {name!r} must be letters, digits, '_', '-' or '.'")
        known = set(self.channels)
        check_interval_names(self.time_intervals)
        for place, policy in self.all_policies():
            self._known_intervals(f"{place}.mute_during", policy.mute_during)
            for index, level in enumerate(policy.levels, start=1):
                missing = [c for c in level.channels if c not in known]
                if missing:
                    raise ValueError(
                        f"{place} level {index} uses undefined channel(s) {missing}; "
                        f"defined channels: {sorted(known)}"
                    )
                self._known_intervals(f"{place}.levels.{index}.mute_during", level.mute_during)
        return self

    def all_policies(self) -> list[tuple[str, PolicyConfig]]:
        """Every configured policy with its dotted place (`policies.P1`, `services.payments.default`, ...)."""
        where: list[tuple[str, PolicyConfig]] = [(f"policies.{k}", p) for k, p in self.policies.items()]
        for section, groups in (("services", self.services), ("named_policies", self.named_policies)):
            for group, policies in groups.items():
                where += [(f"{section}.{group}.{k}", p) for k, p in policies.items()]
        return where

    def check_targets(self, schedules: Mapping[str, Any], people: Mapping[str, Any]) -> None:
        """ValueError naming each level that targets a schedule or a person that is not defined."""
        for place, policy in self.all_policies():
            for index, level in enumerate(policy.levels, start=1):
                for what, names, known, section in (("schedule", level.schedule, schedules, "oncall.schedules"),
                                                    ("person", level.person, people, "people")):
                    missing = [n for n in names if n not in known]
                    if missing:
                        raise ValueError(f"escalation.{place} level {index} names undefined {what}(s) {missing}; "
                                         f"{section} defines: {', '.join(sorted(known)) or 'none'}")

    def _known_intervals(self, place: str, names: list[str]) -> None:
        missing = [n for n in names if n not in self.time_intervals]
        if missing:
            defined = ", ".join(sorted(self.time_intervals)) or "none"
            raise ValueError(f"{place} names undefined time interval(s) {missing}; "
                             f"escalation.time_intervals defines: {defined}")

    @classmethod
    def from_settings_section(
        cls, section: EscalationConfig | Mapping[str, Any] | None, alerts_dir: Path | str | None = None
    ) -> EscalationConfig:
        """The section (a raw dict is validated: ConfigError naming each key); file channels without `dir`
        write to alerts_dir."""
        config = cls.from_section(section)
        target = Path(alerts_dir) if alerts_dir is not None else Path("var/alerts")
        channels = {
            name: s.model_copy(update={"dir": target}) if isinstance(s, FileSettings) and s.dir is None else s
            for name, s in config.channels.items()
        }
        return config.model_copy(update={"channels": channels})

    def policy_for(
        self, severity: Severity | str, service: str | None = None, policy_name: str | None = None
    ) -> PolicyConfig:
        """The policy for an incident: the named policy (from the catalog), then the service's,
        then the severity's, then `default`, then the built-in one; each by severity, then `default`."""
        sev = Severity(severity).value
        groups = []
        if policy_name and policy_name in self.named_policies:
            groups.append(self.named_policies[policy_name])
        if service and service in self.services:
            groups.append(self.services[service])
        for group in groups:
            found = group.get(sev) or group.get("default")
            if found is not None:
                return found
        return self.policies.get(sev) or self.policies.get("default") or default_policy(sev, list(self.channels))

    def check_policy_names(self, names: Mapping[str, str | None]) -> None:
        """Raise ConfigError when a service (name -> its catalog escalation_policy) names no named policy."""
        unknown = {svc: name for svc, name in names.items() if name and name not in self.named_policies}
        if unknown:
            listed = ", ".join(f"{svc} -> {name!r}" for svc, name in sorted(unknown.items()))
            defined = sorted(self.named_policies) or "none"
            raise ConfigError(f"service catalog names unknown escalation policies: {listed} "
                              f"(escalation.named_policies defines: {defined})")

    @property
    def inhibit_rules(self) -> tuple[InhibitRule, ...]:
        """The inhibit rules in force (the default rule when the key is absent)."""
        return DEFAULT_INHIBIT_RULES if self.inhibit is None else tuple(self.inhibit)

    def rate_limits(self) -> dict[str, int]:
        """Each channel's max notifications per minute."""
        return {name: s.max_per_minute for name, s in self.channels.items()}

    def see_command_for(self, incident_id: str) -> str:
        """The command that shows an incident."""
        return self.see_command.format(incident_id=incident_id)

    def url_for(self, incident_id: str) -> str | None:
        """The incident's URL, when a url_template is configured."""
        return self.url_template.format(incident_id=incident_id) if self.url_template else None
