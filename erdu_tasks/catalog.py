"""The service catalog: which services exist, who owns them, what depends on what."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from erdu_tasks.errors import ConfigError, config_error
from erdu_tasks.settings.common import compile_pattern


_SAFE = r"^[A-Za-z0-9_.@:-]{1,128}$"

CATALOG_FIELDS: frozenset[str] = frozenset({"name", "owner", "supervisor", "systemd", "docker"})
"""Catalog fields a runbook's params may use as `{catalog.<field>}`; values pass the same check as {service}."""


class Health(BaseModel):
    """How to tell the service is healthy: an HTTP request (`url`) or a command (`argv`, no shell).

    A runbook's `validation: {check: from_catalog}` re-runs it after a fix; `{service}`, `{host}` and
    `{catalog.FIELD}` placeholders are allowed, under the same value check as in runbooks.
    """

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(default=None, min_length=1, pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://")
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    expect_status: list[int] | int | None = None
    max_latency: float | None = Field(default=None, gt=0)
    body_contains: str | None = None
    verify_tls: bool = True
    argv: list[str] | None = Field(default=None, min_length=1)
    expect_exit: list[int] | int | None = None
    timeout: float | None = Field(default=None, gt=0, le=3600)

    @model_validator(mode="after")
    def _one_kind(self) -> "Health":
        if (self.url is None) == (self.argv is None):
            raise ValueError("give exactly one of url (an HTTP check) or argv (a command)")
        return self

    def check_spec(self) -> dict[str, Any]:
        """The fixer's validation check (kind http or command) as a plain dict, before placeholders."""
        if self.url is not None:
            spec: dict[str, Any] = {"check": "http", "url": self.url, "method": self.method, "headers": self.headers,
                                    "expect_status": self.expect_status, "max_latency": self.max_latency,
                                    "body_contains": self.body_contains, "verify_tls": self.verify_tls}
        else:
            spec = {"check": "command", "argv": list(self.argv or [])}
            if self.expect_exit is not None:
                spec["expect_exit"] = self.expect_exit
        if self.timeout is not None:
            spec["timeout"] = self.timeout
        return {k: v for k, v in spec.items() if v is not None}


class Service(BaseModel):
    """One service ERDU knows."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    aliases: list[str] = Field(default_factory=list)
    owner: str | None = None
    user_facing: bool = False
    depends_on: list[str] = Field(default_factory=list)
    escalation_policy: str | None = None
    # The hosts the service runs on: a runbook URL whose host comes from an incident may aim only at
    # these (or at the runbook_hosts setting); names, IP addresses or networks such as 10.0.3.0/24.
    hosts: list[str] = Field(default_factory=list)
    # How to find the service's process, for the capture before a repair (fixer/capture.py):
    pid_file: str | None = None
    process: str | None = Field(default=None, min_length=1, max_length=500)
    """An RE2 pattern searched in each process's command line (the oldest match wins)."""
    supervisor: str | None = Field(default=None, pattern=_SAFE)
    systemd: str | None = Field(default=None, pattern=_SAFE)
    docker: str | None = Field(default=None, pattern=_SAFE)
    log_file: str | None = None
    """Its log file (a glob picks the newest): the last lines go into the capture."""
    python: bool | None = None
    """Force (true) or skip (false) the py-spy thread dump; unset: when the process is a Python interpreter."""
    capture: bool = True
    """False: no capture before this service's restarts."""
    health: Health | None = None

    @field_validator("process")
    @classmethod
    def _re2(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            compile_pattern(pattern)
        return pattern

    @field_validator("pid_file", "log_file")
    @classmethod
    def _absolute(cls, path: str | None) -> str | None:
        if path is not None and not path.startswith("/"):
            raise ValueError("must be an absolute path")
        return path

    def field_value(self, name: str) -> str | None:
        """A catalog field a runbook's params may name as `{catalog.NAME}` (see CATALOG_FIELDS)."""
        value = getattr(self, name, None) if name in CATALOG_FIELDS else None
        return None if value is None else str(value)


_SERVICES = TypeAdapter(list[Service])


class Catalog:
    """Services by name, with a matcher that finds them mentioned in a message."""

    def __init__(self, services: list[Service]) -> None:
        self.services = {s.name: s for s in services}
        words = {}
        for s in services:
            for word in [s.name, *s.aliases]:
                words[word.lower()] = s.name
        self._names = words
        self._pattern = (
            re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
                       + r")(?![\w-])", re.IGNORECASE)
            if words else None
        )

    @classmethod
    def load(cls, path: Path | None) -> "Catalog":
        """Read a catalog YAML file (a list under `services:`); no file means an empty catalog."""
        if path is None:
            return cls([])
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read service catalog: {exc}") from None
        try:
            services = _SERVICES.validate_python(data.get("services") or [])
        except ValidationError as exc:
            raise config_error(exc, f"service catalog {path}", prefix=("services",)) from None
        return cls(services)

    def mentioned(self, text: str) -> list[str]:
        """Catalog services named (or aliased) in the text, in catalog order."""
        if self._pattern is None:
            return []
        found = {self._names[m.group(1).lower()] for m in self._pattern.finditer(text[:10_000])}
        return [name for name in self.services if name in found]

    def hosts(self) -> list[str]:
        """Every host of every service, in catalog order."""
        return [host for s in self.services.values() for host in s.hosts]

    def dependants(self, name: str) -> list[str]:
        """Services that depend on name, directly or transitively."""
        out: list[str] = []
        frontier = [name]
        while frontier:
            current = frontier.pop()
            for s in self.services.values():
                if current in s.depends_on and s.name not in out and s.name != name:
                    out.append(s.name)
                    frontier.append(s.name)
        return out

    def dependencies(self, name: str) -> list[str]:
        """Services name depends on, directly or transitively."""
        out: list[str] = []
        frontier = [name]
        while frontier:
            service = self.services.get(frontier.pop())
            for dep in service.depends_on if service else ():
                if dep not in out and dep != name:
                    out.append(dep)
                    frontier.append(dep)
        return out

    def is_user_facing(self, name: str) -> bool:
        """True when users see this service directly."""
        service = self.services.get(name)
        return bool(service and service.user_facing)
