"""Machine health from psutil: CPU, memory, disks and processes that must be running.

A threshold is an incident only when it has been crossed for `sustained_for` seconds in a
row (the start of the breach is kept in Postgres), so a spike is not an incident.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import psutil

from erdu_tasks.fixer.checks import ProcessCheck, run_check
from erdu_tasks.ingest.accept import IngestRuntime
from erdu_tasks.model import Event
from erdu_tasks.monitors.config import ProcessRequirement, SystemConfig, Threshold
from erdu_tasks.monitors.state import Decision, Observation, observe


@dataclass(frozen=True)
class Sample:
    """One reading of the machine."""

    cpu: float | None = None
    memory: float | None = None
    disks: dict[str, float | None] = field(default_factory=dict)   # None: the path is unreadable
    processes: dict[str, tuple[bool, str]] = field(default_factory=dict)


def take_sample(config: SystemConfig) -> Sample:
    """Read what the config asks for (CPU is averaged over cpu_sample_seconds)."""
    cpu = psutil.cpu_percent(interval=config.cpu_sample_seconds) if config.cpu else None
    memory = psutil.virtual_memory().percent if config.memory else None
    disks: dict[str, float | None] = {}
    for d in config.disks:
        try:
            disks[d.path] = psutil.disk_usage(d.path).percent
        except OSError:
            disks[d.path] = None
    processes = {}
    for p in config.processes:
        spec = ProcessCheck(check="process", name=p.name, cmdline_contains=p.cmdline_contains, min_count=p.min_count)
        result = run_check(spec, {})
        processes[p.label] = (result.ok, result.detail)
    return Sample(cpu, memory, disks, processes)


def _threshold(key: str, what: str, value: float | None, limit: Threshold, host: str, service: str | None,
               extra: dict | None = None) -> Observation:
    if value is None:
        detail = f"{what}: cannot be read"
        failing = True
    else:
        failing = value >= limit.percent
        detail = f"{what} at {value:.1f}% (threshold {limit.percent:g}%)"
    data = {"metric": key.rsplit(":", 1)[-1], "value": value, "threshold": limit.percent,
            "sustained_for": limit.sustained_for, **(extra or {})}
    event = Event(source="system", message=f"Resource utilization high: {what} on {host}", severity=limit.severity,
                  service=service, host=host, dedup_key=key, labels={"check": key}, details=data)
    return Observation(key=key, failing=failing, detail=detail, event=event, sustained_for=limit.sustained_for,
                       data=data, resolve_on_recovery=limit.resolve_on_recovery)


def _process(key: str, req: ProcessRequirement, ok: bool, detail: str, host: str,
             service: str | None) -> Observation:
    data = {"process": req.label, "min_count": req.min_count, "detail": detail}
    event = Event(source="system", message=f"Required process {req.label} is not running on {host}",
                  severity=req.severity, service=req.service or service, host=host, dedup_key=key,
                  labels={"check": key}, details=data)
    return Observation(key=key, failing=not ok, detail=detail, event=event, sustained_for=req.sustained_for,
                       data=data, resolve_on_recovery=req.resolve_on_recovery)


def observations(config: SystemConfig, sample: Sample, host: str) -> list[Observation]:
    """Each configured threshold and process as a condition."""
    out = []
    base = f"system:{host}"
    if config.cpu:
        out.append(_threshold(f"{base}:cpu", "CPU", sample.cpu, config.cpu, host, config.service))
    if config.memory:
        out.append(_threshold(f"{base}:memory", "memory", sample.memory, config.memory, host, config.service))
    for d in config.disks:
        out.append(_threshold(f"{base}:disk:{os.path.normpath(d.path)}", f"disk {d.path}", sample.disks.get(d.path),
                              d, host, config.service, {"path": d.path}))
    for p in config.processes:
        ok, detail = sample.processes.get(p.label, (False, "not checked"))
        out.append(_process(f"{base}:process:{p.label}", p, ok, detail, host, config.service))
    return out


def run_system(config: SystemConfig, db, rt: IngestRuntime, notify: Callable[[str], None],
               *, host: str, now: Callable[[], datetime],
               sampler: Callable[[SystemConfig], Sample] = take_sample,
               resolved: Callable[[str], None] | None = None) -> list[Decision]:
    """Sample the machine and record every condition in one transaction."""
    sample = sampler(config)
    return observe(db, observations(config, sample, host), rt, notify, now(), resolved=resolved)
