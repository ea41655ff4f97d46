"""`erdu flower`: the Flower dashboard on ERDU's app and queues, behind basic auth from settings."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any

from erdu_tasks.errors import ConfigError
from erdu_tasks.settings.servers import FLOWER_ADDRESS, FLOWER_PORT, FlowerSection, tcp_port

DEFAULT_PORT = FLOWER_PORT
DEFAULT_ADDRESS = FLOWER_ADDRESS


@dataclass(frozen=True)
class FlowerOptions:
    """Where Flower listens and who may see it."""

    port: int = DEFAULT_PORT
    address: str = DEFAULT_ADDRESS
    user: str | None = None
    password: str | None = field(default=None, repr=False)

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


def flower_options(section: FlowerSection | dict[str, Any] | None, *, port: int | None = None,
                  address: str | None = None) -> FlowerOptions:
    """Build and check the options from the settings' flower section and command-line overrides."""
    flower = FlowerSection.from_section(section)
    try:
        chosen_port = tcp_port(port, "--port") if port is not None else flower.port
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    opts = FlowerOptions(port=chosen_port, address=str(address if address is not None else flower.address),
                         user=flower.user,
                         password=flower.password.get_secret_value() if flower.password is not None else None)
    check_exposure(opts)
    check_environment()
    return opts


def check_exposure(opts: FlowerOptions) -> None:
    """Flower can retry, revoke and shut down tasks: never listen beyond this machine without auth."""
    if not opts.has_auth and not is_loopback(opts.address):
        raise ConfigError(f"refusing to run Flower on {opts.address or 'every interface'} without authentication: "
                          "set flower.user and flower.password (ERDU_FLOWER__USER, ERDU_FLOWER__PASSWORD) "
                          "or listen on 127.0.0.1")


TASKS_COLUMNS = "name,args,state,received,runtime,worker,routing_key,uuid"
"""The Tasks page's columns: every stage task's argument is its incident id, so `args` shows the incident."""


def flower_argv(opts: FlowerOptions, broker_url: str) -> list[str]:
    """The `celery` argv that runs Flower on ERDU's broker (the queues come from the app's task_queues)."""
    return ["--broker", broker_url, "flower", f"--port={opts.port}", f"--address={opts.address}",
            "--purge_offline_workers=300", f"--tasks_columns={TASKS_COLUMNS}"]


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


UNSAFE_ENVIRONMENT = ("FLOWER_UNAUTHENTICATED_API", "FLOWER_AUTH", "FLOWER_AUTH_PROVIDER")
"""Flower settings that would open its API (shutdown, revoke, send-task) to anyone who can reach it."""


def check_environment(environ: dict[str, str] | None = None) -> None:
    """Refuse a Flower setting from the environment that would bypass ERDU's basic auth."""
    env = os.environ if environ is None else environ
    found = [name for name in UNSAFE_ENVIRONMENT if env.get(name, "").strip()]
    if found:
        raise ConfigError(f"refusing to run Flower with {', '.join(found)} set: it would open Flower's API "
                          "(shutdown, revoke, send task) past ERDU's basic auth; unset it")


def guard_metrics() -> None:
    """Put Flower's own `/metrics` behind its basic auth, and turn it off (404) when there is none.

    Flower serves `/metrics` (task names, workers, queue state) to anyone, whatever its auth says; with
    this, a request without the dashboard's credentials gets 401.
    """
    import tornado.web
    from flower.views import monitor

    original = monitor.Metrics.get
    if getattr(original, "erdu_guarded", False):
        return

    async def get(self: Any) -> None:
        if not self.application.options.basic_auth:
            raise tornado.web.HTTPError(404)
        self.get_current_user()   # raises 401 for missing or wrong credentials
        await original(self)

    get.erdu_guarded = True  # type: ignore[attr-defined]
    monitor.Metrics.get = get  # type: ignore[method-assign]


def list_configured_queues() -> None:
    """Make Flower's Broker page (and /api/queues/length) list every configured queue, always.

    Flower 2.2 builds the list from the workers it last inspected (BaseHandler.get_active_queue_names in
    flower/views/__init__.py) and falls back to the app's task_queues only when it knows no worker: opening one
    worker's page narrows the list to that worker's queues until every worker's page has been opened. ERDU's
    app declares every role queue, so the list is the union of both. Delete this once Flower lists the
    configured queues itself.
    """
    from flower.views import BaseHandler

    original = BaseHandler.get_active_queue_names
    if getattr(original, "erdu_configured", False):
        return

    def get_active_queue_names(self: Any) -> list[str]:
        configured = {q.name for q in self.capp.conf.task_queues or [] if q.name}
        return sorted(set(original(self)) | configured)

    get_active_queue_names.erdu_configured = True  # type: ignore[attr-defined]
    BaseHandler.get_active_queue_names = get_active_queue_names  # type: ignore[method-assign]


def run_flower(opts: FlowerOptions, settings: Any) -> int:
    """Run Flower in the foreground on ERDU's broker and queues."""
    check_exposure(opts)
    guard_metrics()
    list_configured_queues()
    os.environ.pop("FLOWER_BASIC_AUTH", None)
    os.environ.update(flower_env(opts))
    from erdu_tasks.celery_ext.broker import without_password

    # The broker's password stays off the app's configuration; the transport adds it when it connects.
    return dashboard_app(settings).start(flower_argv(opts, without_password(settings.redis_url))) or 0
