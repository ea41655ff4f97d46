"""The service catalog: which services exist, who owns them, what depends on what."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from erdu_tasks.errors import ConfigError, config_error


class Service(BaseModel):
    """One service ERDU knows."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    aliases: list[str] = Field(default_factory=list)
    owner: str | None = None
    user_facing: bool = False
    depends_on: list[str] = Field(default_factory=list)
    escalation_policy: str | None = None
    # The hosts the service runs on: a runbook URL whose host comes from an incident may aim only at
    # these (or at the runbook_hosts setting); names, IP addresses or networks such as 10.0.3.0/24.
    hosts: list[str] = Field(default_factory=list)


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
