"""The `api` and `flower` settings sections: where the HTTP API and the task dashboard listen.

    api:
      host: 127.0.0.1
      port: 8080
      max_body_bytes: 1048576        # a bigger request is refused (413)
      max_json_depth: 32
      db_pool_max: 8
      db_timeout_seconds: 3
      broker_timeout_seconds: 2
      default_page_size: 50
      public_url: https://erdu.example.com   # the console's address as people reach it (links in notifications)
    flower:
      port: 5555
      address: 127.0.0.1             # beyond this machine only with user and password
      user: ops                      # basic auth (or ERDU_FLOWER__USER / ERDU_FLOWER__PASSWORD)
      password: a-long-password

The API's tokens are top-level keys (`api_token`, `api_read_token`; ERDU_API_TOKEN, ERDU_API_READ_TOKEN),
never keys of the `api` section.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, SecretStr, field_validator, model_validator

from erdu_tasks.settings.common import Section, refused

FLOWER_PORT = 5555
FLOWER_ADDRESS = "127.0.0.1"


class ApiSection(Section):
    """The `api` section: where the API listens and its limits."""

    KEY: ClassVar[str] = "api"

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=64 * 1_048_576)
    max_json_depth: int = Field(default=32, ge=4, le=256)
    db_pool_max: int = Field(default=8, ge=1)
    db_timeout_seconds: float = Field(default=3.0, gt=0)
    broker_timeout_seconds: float = Field(default=2.0, gt=0)
    default_page_size: int = Field(default=50, ge=1, le=500)
    # The console's base URL as people reach it; notifications link to {public_url}/incidents/ID.
    # Unset: http://{host}:{port}.
    public_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=512)

    def console_url(self, path: str = "") -> str:
        """An absolute link into the console (path starting with '/')."""
        base = (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")
        return base + path

    token: refused("set ERDU_API_TOKEN (or api_token at the top level of the config file)")
    read_token: refused("set ERDU_API_READ_TOKEN (or api_read_token at the top level of the config file)")


def _port(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {value!r}")
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"must be a number, not {value!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"{port} is not a TCP port")
    return port


class FlowerSection(Section):
    """The `flower` section: where the dashboard listens and its basic-auth user."""

    KEY: ClassVar[str] = "flower"

    port: int = FLOWER_PORT
    address: str = FLOWER_ADDRESS
    user: str | None = None
    password: SecretStr | None = None

    @field_validator("port", mode="before")
    @classmethod
    def _tcp_port(cls, value: Any) -> int:
        return _port(value)

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and (":" in value or "," in value):
            raise ValueError("must be a string without ':' or ','")
        return value or None

    @field_validator("password")
    @classmethod
    def _password(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and "," in value.get_secret_value():
            raise ValueError("must be a string without ','")
        return value if value is not None and value.get_secret_value() else None

    @model_validator(mode="after")
    def _both_or_neither(self) -> FlowerSection:
        if bool(self.user) != bool(self.password):
            raise ValueError("give both user and password for basic auth, or neither")
        return self


def tcp_port(value: Any, key: str) -> int:
    """A port given on the command line, checked like the section's (ValueError naming the key)."""
    try:
        return _port(value)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
