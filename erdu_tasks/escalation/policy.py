"""Escalation policy: who hears about an incident, when, and how often.

Everything here is a pure decision over facts and an injected `now`; storing what was sent,
the per-channel counters and the delivery itself belong to the caller.

The `escalation` section of the settings (erdu.yaml) looks like this; every key is optional
and an empty section means "one `file` channel writing to alerts_dir, default deadlines":

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
      see_command: "erdu incidents show {incident_id}"
      url_template: "https://erdu.example.com/incidents/{incident_id}"

Durations are seconds (`90`) or units (`500ms`, `30s`, `5m`, `1h30m`, `2d`).

Levels are numbered from 1. Level 1 starts when escalation starts; level n+1 starts when
level n's ack_deadline has passed (or earlier, when every delivery of level n gave up).
Step (level, repeat) with repeat 0 is a level's first notification. A step is identified
by `step_key`; claiming that key under a unique constraint before sending is what makes a
doubled or redelivered sweeper run send nothing twice.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from erdu_tasks.errors import ConfigError
from erdu_tasks.model import Severity
from erdu_tasks.timecfg import quoted_time, valid_timezone
from erdu_tasks.escalation.channels import CHANNEL_TYPES, AnyChannelSettings, DeliveryResult, Notification
from erdu_tasks.escalation.channels.file import FileSettings

# --------------------------------------------------------------------------- configuration

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_CHANNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TEMPLATE_FIELDS = {"incident_id"}


def parse_duration(value: Any) -> timedelta:
    """A positive duration from seconds (int/float/"90") or units ("500ms", "5m", "1h30m", "2d")."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool):
        raise ValueError("a duration cannot be true/false")
    elif isinstance(value, (int, float)):
        result = timedelta(seconds=value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            result = timedelta(seconds=float(text))
        elif text and _DURATION_PART.sub("", text) == "":
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))
            result = timedelta(seconds=seconds)
        else:
            raise ValueError(f"{value!r} is not a duration (use e.g. 90, 30s, 5m, 1h30m, 2d)")
    else:
        raise ValueError(f"{value!r} is not a duration")
    if result <= timedelta(0):
        raise ValueError("a duration must be positive")
    return result


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
PolicyKey = Literal["P1", "P2", "P3", "P4", "P5", "default"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LevelConfig(_Model):
    """One escalation level: whom to notify, how long to wait for an ack, how often to repeat."""

    channels: list[str] = Field(min_length=1)
    ack_deadline: Duration | None = None
    repeat_interval: Duration | None = None
    max_repeats: int | None = Field(default=None, ge=0)


class PolicyConfig(_Model):
    """Ordered levels for one severity (or one service and severity)."""

    levels: list[LevelConfig] = Field(min_length=1, max_length=20)

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


class QuietHoursConfig(_Model):
    """A daily window in a timezone during which the listed severities are held back."""

    timezone: str = "UTC"
    start: time
    end: time
    severities: list[Severity] = Field(default_factory=lambda: [Severity.P4, Severity.P5])

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return valid_timezone(value)

    @field_validator("start", "end", mode="before")
    @classmethod
    def _not_a_number(cls, value: Any) -> Any:
        return quoted_time(value, "22:00")

    @model_validator(mode="after")
    def _sane(self) -> QuietHoursConfig:
        if self.start == self.end:
            raise ValueError("start and end are equal: the window would be empty")
        if Severity.P1 in self.severities:
            raise ValueError("quiet hours never hold back P1")
        return self

    def active(self, now: datetime) -> bool:
        """True when now falls inside the window (windows may cross midnight)."""
        local = _aware(now).astimezone(ZoneInfo(self.timezone)).time().replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def ends_after(self, now: datetime) -> datetime:
        """The first end of the window after now (UTC)."""
        zone = ZoneInfo(self.timezone)
        local = _aware(now).astimezone(zone)
        candidate = datetime.combine(local.date(), self.end, tzinfo=zone)
        if candidate <= local:
            candidate = datetime.combine(local.date() + timedelta(days=1), self.end, tzinfo=zone)
        return candidate.astimezone(timezone.utc)

    def holds(self, severity: Severity | str, now: datetime) -> bool:
        """True when a notification of this severity must wait (never for P1)."""
        sev = Severity(severity)
        return sev is not Severity.P1 and sev in self.severities and self.active(now)


class RetryConfig(_Model):
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


class EscalationConfig(_Model):
    """The validated `escalation` section: channels, policies, quiet hours, retries."""

    channels: dict[str, AnyChannelSettings] = Field(min_length=1)
    policies: dict[PolicyKey, PolicyConfig] = Field(default_factory=dict)
    services: dict[str, dict[PolicyKey, PolicyConfig]] = Field(default_factory=dict)
    named_policies: dict[str, dict[PolicyKey, PolicyConfig]] = Field(default_factory=dict)
    quiet_hours: QuietHoursConfig | None = None
    retry: RetryConfig = Field(default_factory=RetryConfig)
    see_command: str = "erdu incidents show {incident_id}"
    url_template: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _channel_types(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        channels = data.get("channels")
        if channels is None or channels == {}:
            data["channels"] = {"file": {"type": "file"}}
        elif isinstance(channels, dict):
            filled = {}
            for name, settings in channels.items():
                settings = {} if settings is None else settings
                if isinstance(settings, dict) and "type" not in settings:
                    if name not in CHANNEL_TYPES:
                        raise ValueError(
                            f"channel {name!r} needs a type (one of {', '.join(CHANNEL_TYPES)})"
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
        where: list[tuple[str, PolicyConfig]] = [(f"policies.{k}", p) for k, p in self.policies.items()]
        for section, groups in (("services", self.services), ("named_policies", self.named_policies)):
            for group, policies in groups.items():
                where += [(f"{section}.{group}.{k}", p) for k, p in policies.items()]
        for place, policy in where:
            for index, level in enumerate(policy.levels, start=1):
                missing = [c for c in level.channels if c not in known]
                if missing:
                    raise ValueError(
                        f"{place} level {index} uses undefined channel(s) {missing}; "
                        f"defined channels: {sorted(known)}"
                    )
        return self

    @classmethod
    def from_settings_section(
        cls, section: Mapping[str, Any] | None, alerts_dir: Path | str | None = None
    ) -> EscalationConfig:
        """Validate the settings' `escalation` dict; file channels without `dir` write to alerts_dir."""
        try:
            config = cls.model_validate(dict(section or {}))
        except ValidationError as exc:
            lines = []
            for error in exc.errors():
                place = ".".join(str(p) for p in error["loc"])
                message = error["msg"].removeprefix("Value error, ")
                lines.append(f"  escalation{'.' + place if place else ''}: {message}")
            raise ConfigError("invalid escalation settings:\n" + "\n".join(lines)) from None
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

    def rate_limits(self) -> dict[str, int]:
        """Each channel's max notifications per minute."""
        return {name: s.max_per_minute for name, s in self.channels.items()}

    def see_command_for(self, incident_id: str) -> str:
        """The command that shows an incident."""
        return self.see_command.format(incident_id=incident_id)

    def url_for(self, incident_id: str) -> str | None:
        """The incident's URL, when a url_template is configured."""
        return self.url_template.format(incident_id=incident_id) if self.url_template else None


# --------------------------------------------------------------------------- the plan


class PlanState(StrEnum):
    """What the escalation of one incident needs right now."""

    NOTIFY = "notify"
    WAITING = "waiting"
    QUIET = "quiet"
    ACKNOWLEDGED = "acknowledged"
    EXHAUSTED = "exhausted"


@dataclass(frozen=True)
class Step:
    """One notification of one level: repeat 0 is the level's first, 1.. its re-notifications."""

    level: int
    repeat: int
    channels: tuple[str, ...]
    due_at: datetime


@dataclass(frozen=True)
class SentStep:
    """A step already claimed (sent_at: when); failed_at is set when every delivery of it gave up."""

    level: int
    repeat: int
    sent_at: datetime | None = None
    failed_at: datetime | None = None


@dataclass(frozen=True)
class EscalationPlan:
    """Steps to send now, steps held by quiet hours, and when to look again."""

    state: PlanState
    due: tuple[Step, ...]
    held: tuple[Step, ...]
    next_at: datetime | None
    level: int


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: pass timezone-aware times")
    return moment


def _as_sent(record: SentStep | tuple[Any, ...]) -> SentStep:
    return record if isinstance(record, SentStep) else SentStep(*record)


def level_starts(policy: PolicyConfig, started_at: datetime, failed: Mapping[int, datetime]) -> list[datetime]:
    """When each level begins: after the previous one's deadline, or when all its deliveries gave up."""
    starts = [started_at]
    for number, level in enumerate(policy.levels[:-1], start=1):
        begin = starts[-1]
        assert level.ack_deadline is not None  # enforced by PolicyConfig
        nxt = begin + level.ack_deadline
        gave_up = failed.get(number)
        if gave_up is not None:
            nxt = min(nxt, max(gave_up, begin))
        starts.append(nxt)
    return starts


def plan_steps(
    policy: PolicyConfig,
    *,
    started_at: datetime,
    now: datetime,
    acknowledged_at: datetime | None = None,
    sent: Iterable[SentStep | tuple[Any, ...]] = (),
    severity: Severity | str | None = None,
    quiet_hours: QuietHoursConfig | None = None,
) -> EscalationPlan:
    """The steps of a policy due at `now`, given what was already sent (pure, idempotent).

    Every level that has begun gets its first notification once. Only the current level
    repeats, and after a gap (a sweeper that was down) at most the latest missed repeat is
    due, never a burst: a repeat that fell due before the level's last sent_at is skipped.
    """
    started_at, now = _aware(started_at), _aware(now)
    if acknowledged_at is not None and _aware(acknowledged_at) <= now:
        return EscalationPlan(PlanState.ACKNOWLEDGED, (), (), None, 0)
    if now < started_at:
        return EscalationPlan(PlanState.WAITING, (), (), started_at, 0)
    records = [_as_sent(r) for r in sent]
    done = {(r.level, r.repeat) for r in records}
    failed: dict[int, datetime] = {}
    for r in records:
        if r.failed_at is not None:
            failed[r.level] = min(failed.get(r.level, r.failed_at), _aware(r.failed_at))
    starts = level_starts(policy, started_at, failed)
    current = max(i for i, begin in enumerate(starts) if begin <= now)
    due = [
        Step(i + 1, 0, tuple(policy.levels[i].channels), starts[i])
        for i in range(current + 1)
        if (i + 1, 0) not in done
    ]
    candidates = [starts[current + 1]] if current + 1 < len(starts) else []
    level = policy.levels[current]
    if level.repeat_interval is not None:
        interval = level.repeat_interval
        latest = math.floor((now - starts[current]) / interval)
        limit = level.max_repeats if level.max_repeats is not None else math.inf
        latest = int(min(latest, limit))
        mine = [r for r in records if r.level == current + 1]
        highest_sent = max((r.repeat for r in mine), default=0)
        last_sent = max((_aware(r.sent_at) for r in mine if r.sent_at is not None), default=None)
        latest_at = starts[current] + latest * interval
        # A repeat that fell due before this level's last notification went out is superseded by it.
        fresh = last_sent is None or latest_at > last_sent
        if latest >= 1 and latest > highest_sent and (current + 1, 0) in done and fresh:
            due.append(Step(current + 1, latest, tuple(level.channels), latest_at))
        following = latest + 1
        if following <= limit:
            candidates.append(starts[current] + following * interval)
    next_at = min(candidates) if candidates else None
    if due and quiet_hours is not None and severity is not None and quiet_hours.holds(severity, now):
        return EscalationPlan(PlanState.QUIET, (), tuple(due), quiet_hours.ends_after(now), current + 1)
    if due:
        return EscalationPlan(PlanState.NOTIFY, tuple(due), (), next_at, current + 1)
    state = PlanState.WAITING if next_at is not None else PlanState.EXHAUSTED
    return EscalationPlan(state, (), (), next_at, current + 1)


def plan_escalation(
    config: EscalationConfig,
    *,
    severity: Severity | str,
    service: str | None,
    started_at: datetime,
    now: datetime,
    acknowledged_at: datetime | None = None,
    sent: Iterable[SentStep | tuple[Any, ...]] = (),
    policy_name: str | None = None,
) -> EscalationPlan:
    """What to send now for one incident, with its policy and the config's quiet hours."""
    return plan_steps(
        config.policy_for(severity, service, policy_name),
        started_at=started_at,
        now=now,
        acknowledged_at=acknowledged_at,
        sent=sent,
        severity=severity,
        quiet_hours=config.quiet_hours,
    )


def step_key(incident_id: str, started_at: datetime, level: int, repeat: int) -> str:
    """A stable key for one step of one escalation; claim it under a unique constraint before sending."""
    epoch_ms = int(_aware(started_at).timestamp() * 1000)
    return f"{incident_id}:{epoch_ms}:L{level}:R{repeat}"


# --------------------------------------------------------------------------- delivery retries


class RetryDecision(StrEnum):
    """What to do after one delivery attempt."""

    DONE = "done"
    RETRY = "retry"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class RetryPlan:
    """A retry decision and, for RETRY, the delay in seconds."""

    decision: RetryDecision
    delay: float = 0.0


def delivery_retry(
    result: DeliveryResult,
    attempt: int,
    retry: RetryConfig,
    *,
    jitter: Callable[[], float] = random.random,
) -> RetryPlan:
    """After attempt number `attempt` (1-based): done, retry after a backoff, or give up (permanent/exhausted)."""
    if result.ok:
        return RetryPlan(RetryDecision.DONE)
    if result.permanent or attempt >= retry.max_attempts:
        return RetryPlan(RetryDecision.GIVE_UP)
    cap = retry.backoff_cap.total_seconds()
    backoff = min(cap, retry.backoff_base.total_seconds() * 2 ** (attempt - 1))
    delay = backoff * (0.5 + 0.5 * jitter())
    if result.retry_after is not None:
        delay = max(delay, min(result.retry_after, cap))
    return RetryPlan(RetryDecision.RETRY, delay)


# --------------------------------------------------------------------------- rate limits


RATE_WINDOW = timedelta(minutes=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class RateDecision(StrEnum):
    """Whether one notification may go out on a channel now."""

    SEND = "send"
    HOLD = "hold"


@dataclass(frozen=True)
class Digest:
    """How many notifications a channel held back in one window."""

    channel: str
    window_start: datetime
    window_end: datetime
    held: int
    sample_incidents: tuple[str, ...] = ()

    def notification(self, see_command: str = "erdu incidents ls --status escalated") -> Notification:
        """The one digest message for this window."""
        return Notification.digest(
            channel=self.channel,
            held=self.held,
            window_start=self.window_start,
            window_end=self.window_end,
            sample_incidents=self.sample_incidents,
            see_command=see_command,
        )


def rate_window(now: datetime, window: timedelta = RATE_WINDOW) -> datetime:
    """The start of the fixed window (aligned to the epoch, UTC) that now falls in."""
    elapsed = (_aware(now) - _EPOCH) // window
    return _EPOCH + elapsed * window


def rate_decision(count_in_window: int, limit: int) -> RateDecision:
    """SEND while this notification (counted, e.g. a Redis INCR result) is within the limit, else HOLD."""
    return RateDecision.SEND if count_in_window <= limit else RateDecision.HOLD


def digest_for(
    channel: str,
    window_start: datetime,
    count_in_window: int,
    limit: int,
    *,
    window: timedelta = RATE_WINDOW,
    sample_incidents: Iterable[str] = (),
) -> Digest | None:
    """The digest for a finished window, or None when nothing was held."""
    held = count_in_window - limit
    if held <= 0:
        return None
    return Digest(channel, window_start, window_start + window, held, tuple(sample_incidents))


class ChannelRateLimiter:
    """Fixed one-minute windows per channel, in memory: at most `limit` sends, then one digest.

    A multi-process deployment keeps the same counts in a shared store (INCR on
    channel+window, a set-if-absent claim for the digest) and uses rate_decision/digest_for.
    """

    SAMPLE = 10

    def __init__(self, limits: Mapping[str, int], window: timedelta = RATE_WINDOW) -> None:
        self.limits = dict(limits)
        self.window = window
        self._counts: dict[tuple[str, datetime], int] = {}
        self._samples: dict[tuple[str, datetime], list[str]] = {}

    def admit(self, channel: str, now: datetime, incident_id: str | None = None) -> RateDecision:
        """Count one notification for a channel and decide whether it goes out."""
        key = (channel, rate_window(now, self.window))
        self._counts[key] = count = self._counts.get(key, 0) + 1
        decision = rate_decision(count, self.limits.get(channel, 20))
        if decision is RateDecision.HOLD and incident_id is not None:
            sample = self._samples.setdefault(key, [])
            if len(sample) < self.SAMPLE and incident_id not in sample:
                sample.append(incident_id)
        return decision

    def due_digests(self, now: datetime) -> list[Digest]:
        """Digests for windows that have ended; each window yields at most one, once."""
        current = rate_window(now, self.window)
        digests = []
        for key in sorted(k for k in self._counts if k[1] < current):
            channel, start = key
            count = self._counts.pop(key)
            digest = digest_for(channel, start, count, self.limits.get(channel, 20), window=self.window,
                                sample_incidents=self._samples.pop(key, []))
            if digest is not None:
                digests.append(digest)
        return digests
