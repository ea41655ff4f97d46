"""The API's own settings: tokens, limits and where it may listen, checked before it starts."""

from __future__ import annotations

import ipaddress
from typing import Any


from pydantic import Field

from erdu_tasks.errors import ConfigError
from erdu_tasks.settings import secret_value
from erdu_tasks.settings.servers import ApiSection

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class ApiConfig(ApiSection):
    """The `api` section plus the tokens, which come from the top-level `api_token` and `api_read_token`."""

    token: str | None = Field(default=None, repr=False)       # type: ignore[assignment]  # the section refuses these keys
    read_token: str | None = Field(default=None, repr=False)  # type: ignore[assignment]

    @property
    def auth_enabled(self) -> bool:
        """True when a write token is configured; every /v1 call then needs a token."""
        return bool(self.token)


def api_config(settings: Any) -> ApiConfig:
    """The API configuration, or ConfigError naming the bad key."""
    section = ApiSection.from_section(settings.api)
    config = ApiConfig(token=secret_value(settings.api_token), read_token=secret_value(settings.api_read_token),
                       **section.model_dump())
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
