"""erdu.heartbeat (a ping, from any Celery client) and erdu.monitor.heartbeats (beat: who is late)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from erdu_tasks import names
from erdu_tasks.app import app, runtime
from erdu_tasks.errors import TransientError
from erdu_tasks.monitors import heartbeats
from erdu_tasks.tasks.base import ErduTask, log
from erdu_tasks.tasks.publish import hand_on


def _now() -> datetime:
    return datetime.now(timezone.utc)


def ping(rt: Any, name: str, *, source: str, now: datetime | None = None,
         internal: bool = False) -> heartbeats.PingResult:
    """Record one ping and hand a resolved incident to the resolver after the commit (CLI, API, tasks)."""
    with rt.db.transaction() as conn:
        result = heartbeats.ping(conn, name, rt.settings.heartbeats, now=now or _now(), source=source,
                                 internal=internal)
    if result.resolved:
        hand_on("resolve", result.resolved)
    return result


@app.task(name=names.HEARTBEAT, base=ErduTask, bind=True)
def heartbeat(self: ErduTask, name: str) -> dict[str, Any]:
    """A ping for heartbeat `name`; an unknown or badly named one is refused (recorded, not retried)."""
    if not isinstance(name, str):
        return {"refused": "the heartbeat name must be a string"}
    try:
        result = self.with_retries(lambda: ping(runtime(), name, source="celery"))
    except (heartbeats.UnknownHeartbeat, heartbeats.BadHeartbeatName) as exc:
        log.warning("heartbeat refused", heartbeat=name[:128], error=str(exc))
        return {"refused": str(exc)}
    return {"name": name, "state": "up", "created": result.created, "resolved": result.resolved}


@app.task(name=names.MONITOR_HEARTBEATS, base=ErduTask, bind=True)
def monitor_heartbeats(self: ErduTask) -> dict[str, Any]:
    """Open an incident for every heartbeat that is late now."""
    rt = runtime()
    try:
        late = heartbeats.check(rt.db, rt.settings.heartbeats, rt, now=_now(),
                                notify=lambda incident_id: hand_on("assess", incident_id))
    except TransientError as exc:
        log.warning("monitor run skipped: outage", monitor="heartbeats", error=str(exc))
        return {"skipped": str(exc)}
    return {"late": late}
