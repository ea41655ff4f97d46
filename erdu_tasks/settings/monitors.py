"""The `monitors` section of the settings.

Every key is optional; a monitor runs only when its section is present::

    monitors:
      host: web-1                    # names this machine on events (default: its hostname)
      logs:
        interval: 0.5                # seconds between scans (the default keeps p99 detection < 2 s)
        files:
          - path: /var/log/orders/app.log
            service: orders
          - path: /var/log/billing/*.log   # a glob: every matching file is tailed on its own; it
                                           # must not match rotated copies (app.log.1), which are
                                           # followed through the file they were rotated from
            service: billing
            exclude: ['*.gz']        # file names (fnmatch) a glob must skip
            from_start: false        # files present at the first scan start at their end
            error_pattern: '\\b(?:ERROR|FATAL)\\b'   # RE2; what counts as an error line here
        max_line_bytes: 65536        # longer lines are cut and marked "[line truncated ...]"
        hold_timeout: 5              # a partial last line / unfinished traceback waits this long
        rotate_wait: 10              # a rotated file is still read this long after rotation
        lock_timeout: 5              # per-file lock, renewed while reading (bounds the pause after a crash)
      probes:
        interval: 10
        checks:
          - name: orders-health
            url: http://127.0.0.1:8080/health
            method: GET
            timeout: 5
            expect_status: [200]
            max_latency: 1.0
            failures: 3              # consecutive failures before an incident
            service: orders
            severity: P2
      system:
        interval: 15
        cpu: {percent: 90, sustained_for: 120}
        memory: {percent: 90, sustained_for: 120}
        disks: [{path: /, percent: 90, sustained_for: 0}]
        processes: [{name: postgres, sustained_for: 30}]
      celery:
        interval: 15
        roles: [ingest, commander, diagnostician, fixer, resolver]
        critical_roles: [commander, fixer]   # a missing one is P1, the others P2
        missing_for: 30              # seconds a role must be gone before it is an incident
        backlog: {default: 1000, ingest: 5000}
        failed_tasks: true
      celery_apps:                   # the team's own Celery apps (every key: erdu_tasks/settings/celery_apps.py)
        apps:
          - {name: shop, broker_url: "redis://127.0.0.1:6379/1", queues: [celery]}

Anything wrong raises ConfigError naming the key; a path that does not exist yet is only a
warning (see `erdu_tasks.monitors.config.warnings`), since a log file may appear later.
"""

from __future__ import annotations

import glob
import os
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from erdu_tasks.model import Severity
from erdu_tasks.names import ROLES, Queue
from erdu_tasks.settings.celery_apps import CeleryAppsConfig
from erdu_tasks.settings.common import Section, as_int_list, compile_pattern

DEFAULT_ERROR_PATTERN = (
    r"\b(?:ERROR|ERR|EXCEPTION|CRITICAL|CRIT|FATAL|SEVERE|PANIC|EMERG|ALERT)\b"
    r"|Traceback \(most recent call last\)"
    r"|\[(?:error|crit|alert|emerg)\]"
    r"|(?i:\blevel\W{0,3}(?:error|critical|fatal)\b)"
)
"""Lines at error level: the usual level words, Python tracebacks, `[error]`, `level=error`."""

DEFAULT_QUIET_PATTERN = r"\b(?:TRACE|DEBUG|INFO|NOTICE)\b|(?i:\blevel\W{0,3}(?:trace|debug|info|notice)\b)"
"""Lines that say they are below warning level; a classification rule does not make them events."""


class LogFile(Section):
    """One watched file or glob and the service its lines belong to."""

    path: str = Field(min_length=1)
    service: str | None = Field(default=None, max_length=128)
    exclude: list[str] = Field(default_factory=list)
    from_start: bool = False
    error_pattern: str = DEFAULT_ERROR_PATTERN
    quiet_pattern: str = DEFAULT_QUIET_PATTERN

    @field_validator("path")
    @classmethod
    def _absolute(cls, path: str) -> str:
        return os.path.abspath(os.path.expanduser(path))

    @field_validator("error_pattern", "quiet_pattern")
    @classmethod
    def _valid_re2(cls, pattern: str) -> str:
        compile_pattern(pattern)
        return pattern

    @property
    def is_glob(self) -> bool:
        """True when path holds glob characters."""
        return glob.has_magic(self.path)


class LogsConfig(Section):
    """The log tailer: which files, how often, and its limits."""

    interval: float = Field(default=0.5, gt=0, le=3600)
    files: list[LogFile] = Field(min_length=1)
    max_line_bytes: int = Field(default=65536, ge=256, le=16 * 1024 * 1024)
    read_bytes: int = Field(default=8 * 1024 * 1024, ge=4096, description="bytes read per commit")
    run_seconds: float = Field(default=20.0, gt=0, le=600, description="time budget of one scan")
    hold_timeout: float = Field(default=5.0, ge=0, le=3600)
    rotate_wait: float = Field(default=10.0, ge=0, le=3600)
    lock_timeout: float = Field(default=5.0, ge=1, le=3600, description="renewed between commits; after a "
                                "worker crash its file waits at most this long")
    max_event_lines: int = Field(default=200, ge=2, le=10_000)
    watch: bool = Field(default=True, description="read a file as soon as it is written (inotify, through "
                        "watchfiles); the scan every `interval` stays, as the fallback")
    watch_debounce_ms: int = Field(default=20, ge=1, le=10_000, description="writes closer together than "
                                   "this are read in one scan")

    @model_validator(mode="after")
    def _distinct(self) -> "LogsConfig":
        seen: set[str] = set()
        for f in self.files:
            if f.path in seen:
                raise ValueError(f"{f.path} is listed twice")
            seen.add(f.path)
        return self


class Probe(Section):
    """One HTTP probe: the request, what passes, and how many failures in a row make an incident."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    url: str
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=5.0, gt=0, le=300)
    expect_status: Annotated[list[int] | None, BeforeValidator(as_int_list)] = None
    max_latency: float | None = Field(default=None, gt=0)
    body_contains: str | None = None
    verify_tls: bool = True
    failures: int = Field(default=3, ge=1, le=1000)
    service: str | None = Field(default=None, max_length=128)
    severity: Severity = Severity.P2
    resolve_on_recovery: bool = True
    """An escalated (or acknowledged) incident of this probe is resolved when the probe passes again."""

    @field_validator("url")
    @classmethod
    def _valid_url(cls, url: str) -> str:
        if not url.lower().startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        import httpx   # only when probes are configured: every process loads the settings, few make requests

        try:
            host = httpx.URL(url).host
        except (httpx.InvalidURL, ValueError) as exc:
            raise ValueError(f"{url!r} is not a valid URL: {exc}") from None
        if not host:
            raise ValueError(f"{url!r} has no host")
        return url

    def check_spec(self) -> dict[str, Any]:
        """The probe as the fixer's `http` validation check (JSON-ready), so the fix is proven the same way."""
        return {"check": "http", "url": self.url, "method": self.method, "headers": dict(self.headers),
                "timeout": self.timeout, "expect_status": self.expect_status, "max_latency": self.max_latency,
                "body_contains": self.body_contains, "verify_tls": self.verify_tls}


class ProbesConfig(Section):
    """HTTP probes run on every tick, in parallel."""

    interval: float = Field(default=10.0, gt=0, le=86400)
    checks: list[Probe] = Field(min_length=1)
    parallel: int = Field(default=8, ge=1, le=64)

    @model_validator(mode="after")
    def _unique_names(self) -> "ProbesConfig":
        names = [p.name for p in self.checks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"probe names must be unique; repeated: {', '.join(dupes)}")
        return self


class Threshold(Section):
    """A percentage that, held for `sustained_for` seconds, is an incident."""

    percent: float = Field(gt=0, le=100)
    sustained_for: float = Field(default=60.0, ge=0, le=86400)
    severity: Severity = Severity.P2
    resolve_on_recovery: bool = True


class DiskThreshold(Threshold):
    """Disk usage of the file system holding `path`."""

    path: str = Field(min_length=1)


class ProcessRequirement(Section):
    """A process that must be running (by executable name or a command-line substring)."""

    name: str | None = Field(default=None, min_length=1)
    cmdline_contains: str | None = Field(default=None, min_length=1)
    min_count: int = Field(default=1, ge=1)
    sustained_for: float = Field(default=30.0, ge=0, le=86400)
    service: str | None = Field(default=None, max_length=128)
    severity: Severity = Severity.P2
    resolve_on_recovery: bool = True

    @model_validator(mode="after")
    def _one_selector(self) -> "ProcessRequirement":
        if (self.name is None) == (self.cmdline_contains is None):
            raise ValueError("give exactly one of name, cmdline_contains")
        return self

    @property
    def label(self) -> str:
        """How the process is named in messages and state keys."""
        return self.name or f"cmdline:{self.cmdline_contains}"


class SystemConfig(Section):
    """Machine health from psutil."""

    interval: float = Field(default=15.0, gt=0, le=86400)
    cpu: Threshold | None = None
    cpu_sample_seconds: float = Field(default=1.0, ge=0.05, le=60)
    memory: Threshold | None = None
    disks: list[DiskThreshold] = Field(default_factory=list)
    processes: list[ProcessRequirement] = Field(default_factory=list)
    service: str | None = Field(default=None, max_length=128)


class CeleryConfig(Section):
    """ERDU's own workers: failed tasks, roles without a live worker, queue backlogs."""

    interval: float = Field(default=15.0, gt=0, le=86400)
    ping_timeout: float = Field(default=2.0, gt=0, le=60)
    roles: list[str] = Field(default_factory=lambda: [r for r in ROLES if r != Queue.MONITOR.value])
    critical_roles: list[str] = Field(default_factory=lambda: [Queue.COMMANDER.value, Queue.FIXER.value])
    missing_for: float = Field(default=30.0, ge=0, le=86400)
    backlog: dict[str, int] = Field(default_factory=lambda: {"default": 1000})
    backlog_for: float = Field(default=0.0, ge=0, le=86400)
    failed_tasks: bool = True
    failed_severity: Severity = Severity.P2
    failed_lookback: float = Field(default=86400.0, gt=0, description="older failures are not reported")

    @field_validator("roles", "critical_roles")
    @classmethod
    def _known_roles(cls, roles: list[str]) -> list[str]:
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            raise ValueError(f"unknown role(s) {', '.join(unknown)}; roles are: {', '.join(ROLES)}")
        return roles

    @field_validator("backlog")
    @classmethod
    def _known_queues(cls, backlog: dict[str, int]) -> dict[str, int]:
        unknown = [q for q in backlog if q != "default" and q not in ROLES]
        if unknown:
            raise ValueError(f"unknown queue(s) {', '.join(unknown)}; queues are: default, {', '.join(ROLES)}")
        bad = [q for q, n in backlog.items() if not isinstance(n, int) or n < 1]
        if bad:
            raise ValueError(f"backlog thresholds must be positive integers: {', '.join(bad)}")
        return backlog

    def backlog_threshold(self, queue: str) -> int:
        """The backlog that makes `queue` an incident."""
        return self.backlog.get(queue, self.backlog.get("default", 1000))


class MonitorsConfig(Section):
    """The whole `monitors` section; absent sections are monitors that do not run."""

    KEY: ClassVar[str] = "monitors"

    host: str | None = Field(default=None, max_length=255)
    logs: LogsConfig | None = None
    probes: ProbesConfig | None = None
    system: SystemConfig | None = None
    celery: CeleryConfig | None = None
    celery_apps: CeleryAppsConfig | None = None
    """The team's own Celery apps (erdu_tasks/settings/celery_apps.py); watched by `erdu celery-apps watch`."""
