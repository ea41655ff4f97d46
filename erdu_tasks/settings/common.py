"""What every settings section shares: a strict base model and the validators of durations, URLs, patterns."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime, time, timedelta
from functools import lru_cache
from typing import Annotated, Any, ClassVar, Self
from urllib.parse import urlsplit, urlunsplit

import re2
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from erdu_tasks.errors import config_error
from erdu_tasks.timecfg import quoted_time, valid_timezone

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


class Section(BaseModel):
    """A settings section: every key known (an unknown one is refused with its dotted path), immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    KEY: ClassVar[str] = ""
    """The section's key in the settings (top-level sections only), which prefixes every error."""

    @classmethod
    def from_section(cls, section: Any) -> Self:
        """The section as this model: a model is passed through, a raw dict validated (ConfigError naming
        every key at fault by its dotted path)."""
        if isinstance(section, cls):
            return section
        try:
            return cls.model_validate(dict(section or {}))
        except ValidationError as exc:
            prefix = (cls.KEY,) if cls.KEY else ()
            raise config_error(exc, f"{cls.KEY or cls.__name__} settings", prefix=prefix) from None


def refused(hint: str) -> Any:
    """The type of a key that nothing reads: absent it is None; given, it fails saying where it belongs."""

    def _refuse(value: Any) -> None:
        raise ValueError(f"this key is not read; {hint}")

    return Annotated[None, BeforeValidator(_refuse), Field(default=None, exclude=True)]


@lru_cache(maxsize=512)
def compile_pattern(pattern: str) -> Any:
    """Compile a user regex with RE2 (linear time); ValueError with RE2's reason if it is invalid."""
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"invalid regular expression {pattern!r}: {reason}") from None


def as_int_list(value: Any) -> Any:
    """Let YAML say `expect_status: 200` or `[200, 204]`."""
    return [value] if isinstance(value, int) else value


def check_http_url(value: str) -> str:
    """Accept only absolute http(s) URLs."""
    try:
        url = urlsplit(value)
        url.port   # noqa: B018 - parses the port; a bad one raises ValueError
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.hostname or any(c.isspace() for c in value):
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


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


def aware(moment: datetime) -> datetime:
    """The datetime itself; ValueError when it is naive (every clock in ERDU is timezone-aware)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment!r}: pass timezone-aware times")
    return moment


TimeZoneName = Annotated[str, AfterValidator(valid_timezone)]
"""An IANA time zone name (Europe/Berlin, UTC), refused when the zone database does not know it."""

TimeOfDay = Annotated[time, BeforeValidator(lambda value: quoted_time(value, "09:00"))]
"""A time of day; an unquoted YAML 22:00 (read as a number) is refused with a hint."""


def mask_url(url: str) -> str:
    """The URL with its password (if any) shown as `***`."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if not password:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


class DsnStr(str):
    """A connection URL that is used as the string it is, but whose repr masks its password: a settings
    object's repr / str, a traceback's locals or a debug print never show it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(mask_url(str.__str__(self)))

    @property
    def masked(self) -> str:
        """The URL with the password shown as `***`, for messages."""
        return mask_url(str.__str__(self))


Dsn = Annotated[str, AfterValidator(DsnStr)]
"""A database or Redis URL whose password is masked in every repr (use `.masked` in messages)."""


def _runbook_host(value: str) -> str:
    value = value.strip()
    if "/" in value:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a network: {exc}") from None
    elif not value or any(c in value for c in "@/?#%[] ") or (":" in value and not _is_ip(value)):
        raise ValueError(f"{value!r} is not a host name or IP address")
    return value


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


RunbookHost = Annotated[str, AfterValidator(_runbook_host)]
"""A host name, IP address or network (CIDR) an incident's {host} may aim a runbook URL at."""
