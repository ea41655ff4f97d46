"""The API's own settings: tokens, limits and where it may listen, checked before it starts."""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from erdu_tasks.errors import ConfigError

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class ApiConfig(BaseModel):
    """Built from Settings (`api_token`, `api_read_token` and the `api` section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    token: str | None = None
    read_token: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    max_json_depth: int = Field(default=32, ge=4, le=256)
    db_pool_max: int = Field(default=8, ge=1)
    db_timeout_seconds: float = Field(default=3.0, gt=0)
    broker_timeout_seconds: float = Field(default=2.0, gt=0)
    default_page_size: int = Field(default=50, ge=1, le=500)

    @property
    def auth_enabled(self) -> bool:
        """True when a write token is configured; every /v1 call then needs a token."""
        return bool(self.token)


def api_config(settings: Any) -> ApiConfig:
    """The API configuration, or ConfigError naming the bad field."""
    section = dict(settings.api or {})
    for key in ("token", "read_token"):
        if key in section:
            raise ConfigError(f"api.{key} is not read from the api section: set ERDU_API_{key.upper()} "
                              f"(or api_{key} at the top level of the config file)")
    try:
        config = ApiConfig(token=settings.api_token or None, read_token=settings.api_read_token or None, **section)
    except ValidationError as exc:
        lines = [f"  api.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid API settings:\n" + "\n".join(lines)) from None
    if config.read_token and not config.token:
        raise ConfigError("ERDU_API_READ_TOKEN is set but ERDU_API_TOKEN is not: set a write token too, "
                          "otherwise anyone could write while reads need a token")
    if config.token and config.read_token and config.token == config.read_token:
        raise ConfigError("ERDU_API_TOKEN and ERDU_API_READ_TOKEN must differ")
    return config


def is_local(host: str) -> bool:
    """True if host only accepts connections from this machine."""
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(config: ApiConfig, host: str) -> None:
    """Refuse to listen beyond localhost without a token (ConfigError says how to fix it)."""
    if not config.auth_enabled and not is_local(host):
        raise ConfigError(
            f"refusing to listen on {host} without a token: set ERDU_API_TOKEN (and optionally "
            "ERDU_API_READ_TOKEN), or listen on 127.0.0.1"
        )
