"""`erdu flower`: the Flower dashboard on ERDU's app and queues, behind basic auth from settings."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any

from erdu_tasks.errors import ConfigError

DEFAULT_PORT = 5555
DEFAULT_ADDRESS = "127.0.0.1"
_KEYS = {"user", "password", "port", "address"}


@dataclass(frozen=True)
class FlowerOptions:
    """Where Flower listens and who may see it."""

    port: int = DEFAULT_PORT
    address: str = DEFAULT_ADDRESS
    user: str | None = None
    password: str | None = None

    @property
    def has_auth(self) -> bool:
        """True when basic auth is configured."""
        return bool(self.user and self.password)


def is_loopback(address: str) -> bool:
    """True for addresses only this machine can reach ('' and 0.0.0.0 mean every interface)."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def flower_options(section: dict[str, Any], *, port: int | None = None, address: str | None = None) -> FlowerOptions:
    """Build and check the options from the settings' flower section and command-line overrides."""
    unknown = set(section) - _KEYS
    if unknown:
        raise ConfigError(f"flower: unknown setting(s) {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(sorted(_KEYS))})")
    try:
        chosen_port = int(port if port is not None else section.get("port", DEFAULT_PORT))
    except (TypeError, ValueError):
        raise ConfigError(f"flower.port must be a number, not {section.get('port')!r}") from None
    if not 0 < chosen_port < 65536:
        raise ConfigError(f"flower.port {chosen_port} is not a TCP port")
    user = section.get("user")
    password = section.get("password")
    if bool(user) != bool(password):
        raise ConfigError("flower: give both user and password for basic auth, or neither")
    if user is not None and (not isinstance(user, str) or ":" in user or "," in user):
        raise ConfigError("flower.user must be a string without ':' or ','")
    if password is not None and (not isinstance(password, str) or "," in password):
        raise ConfigError("flower.password must be a string without ','")
    opts = FlowerOptions(port=chosen_port, address=str(address if address is not None
                                                       else section.get("address", DEFAULT_ADDRESS)),
                         user=user or None, password=password or None)
    check_exposure(opts)
    return opts


def check_exposure(opts: FlowerOptions) -> None:
    """Flower can retry, revoke and shut down tasks: never listen beyond this machine without auth."""
    if not opts.has_auth and not is_loopback(opts.address):
        raise ConfigError(f"refusing to run Flower on {opts.address or 'every interface'} without authentication: "
                          "set flower.user and flower.password (ERDU_FLOWER__USER, ERDU_FLOWER__PASSWORD) "
                          "or listen on 127.0.0.1")


def flower_argv(opts: FlowerOptions, broker_url: str) -> list[str]:
    """The `celery` argv that runs Flower on ERDU's broker (the queues come from the app's task_queues)."""
    return ["--broker", broker_url, "flower", f"--port={opts.port}", f"--address={opts.address}",
            "--purge_offline_workers=300"]


def flower_env(opts: FlowerOptions) -> dict[str, str]:
    """Credentials go through the environment, so they never show in the process list."""
    return {"FLOWER_BASIC_AUTH": f"{opts.user}:{opts.password}"} if opts.has_auth else {}


def dashboard_app(settings: Any) -> Any:
    """ERDU's Celery app (broker, queues, JSON events) without its task modules: Flower needs no task code,
    and not importing it keeps the dashboard process small."""
    from erdu_tasks.app import make_celery

    celery_app = make_celery(settings)
    celery_app.conf.include = []
    return celery_app


def run_flower(opts: FlowerOptions, settings: Any) -> int:
    """Run Flower in the foreground on ERDU's broker and queues."""
    os.environ.pop("FLOWER_BASIC_AUTH", None)
    os.environ.update(flower_env(opts))
    return dashboard_app(settings).start(flower_argv(opts, settings.redis_url)) or 0
