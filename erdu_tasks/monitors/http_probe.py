"""HTTP probes: an incident after N failures in a row, its recovery on the incident's timeline; an
escalated incident is resolved by the recovery (`resolve_on_recovery`, default on).

A probe is run as the `http` validation check of erdu_tasks.checks, and the incident it
opens carries that check in `error_details["check"]`, so the fixer can re-run exactly the
probe that detected the problem to prove a fix (a runbook with
`validation: {check: from_incident}`).

A probe incident is fingerprinted by the probe's name AND its failure mode (`refused`,
`unreachable`, `timeout`, the status class such as `5xx`, `slow`, `body`): the fix proven for a
refused connection (a restart) is not what a 500 needs, so each mode learns on its own. The
condition (failures in a row, recovery) stays per probe; while the fixer works on the incident the probe
opened, another mode (the moment a restart refuses connections) is counted on that incident
(monitors/state.py).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from erdu_tasks.fixer.checks import CheckResult, HttpCheck, run_check
from erdu_tasks.fixer.urlguard import DEFAULT_POLICY, UrlPolicy
from erdu_tasks.ingest.accept import IngestRuntime
from erdu_tasks.model import Event
from erdu_tasks.monitors.config import Probe, ProbesConfig
from erdu_tasks.monitors.state import Decision, Observation, observe


def run_probe(probe: Probe) -> CheckResult:
    """Run one probe once (never raises); link-local / metadata addresses only with runbook_allow_link_local."""
    return run_check(HttpCheck.model_validate(probe.check_spec()), {}, url_policy=_policy())


def _policy() -> UrlPolicy:
    from erdu_tasks.settings import get_settings

    try:
        return UrlPolicy(allow_link_local=bool(get_settings().runbook_allow_link_local))
    except Exception:   # settings that do not load are reported elsewhere; probes keep the safe default
        return DEFAULT_POLICY


def probe_key(probe: Probe) -> str:
    """The probe's condition key."""
    return f"probe:{probe.name}"


def incident_key(probe: Probe, mode: str) -> str:
    """The dedup_key of the probe's incident for one failure mode."""
    return f"probe:{probe.name}:{mode}"


def failure_mode(result: CheckResult) -> str:
    """How the probe failed: refused, unreachable, timeout, a status class (5xx, 4xx ...), slow, body, error."""
    failure = result.output.get("failure")
    status = result.output.get("status")
    if failure == "status" and isinstance(status, int):
        return f"{status // 100}xx"
    if isinstance(failure, str) and failure:
        return failure
    return "error"


def observation(probe: Probe, result: CheckResult, host: str | None) -> Observation:
    """The probe's result as a condition, with the event that reports it (stable text, dedup by name and mode)."""
    mode = failure_mode(result) if not result.ok else "ok"
    data = {"probe": probe.name, "url": probe.url, "detail": result.detail, "failure_mode": mode,
            "status": result.output.get("status"), "latency": result.output.get("latency")}
    event = Event(source="probe", message=f"HTTP probe {probe.name} is failing ({mode}): {probe.method} {probe.url}",
                  severity=probe.severity, service=probe.service, host=host, dedup_key=incident_key(probe, mode),
                  labels={"probe": probe.name, "url": probe.url[:1024], "failure_mode": mode}, details=data)
    return Observation(key=probe_key(probe), failing=not result.ok, detail=result.detail, event=event,
                       failures_needed=probe.failures,
                       top_details={"check": probe.check_spec(), "probe": probe.name}, data=data,
                       resolve_on_recovery=probe.resolve_on_recovery)


def run_probes(config: ProbesConfig, db, rt: IngestRuntime, notify: Callable[[str], None],
               *, host: str | None, now: Callable[[], datetime],
               runner: Callable[[Probe], CheckResult] = run_probe,
               resolved: Callable[[str], None] | None = None) -> list[Decision]:
    """Run every probe (in parallel), then record the outcomes in one transaction; `resolved` hands on an
    escalated incident the recovery resolved (the resolver writes its report and tells who was notified)."""
    with ThreadPoolExecutor(max_workers=min(config.parallel, len(config.checks))) as pool:
        results = list(pool.map(runner, config.checks))
    observations = [observation(p, r, host) for p, r in zip(config.checks, results)]
    return observe(db, observations, rt, notify, now(), resolved=resolved)
