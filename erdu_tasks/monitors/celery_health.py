"""ERDU watching itself: failed tasks, roles without a live worker, queue backlogs.

- Every row of `failed_tasks` (written by ErduTask.on_failure) is reported once, as a
  workflow-failure incident per (task, exception class); a cursor in `monitor_cursors` moves
  in the same transaction.
- A role none of whose workers answers a ping for `missing_for` seconds is an incident, P1
  for the critical roles (commander, fixer by default), P2 for the others. Workers are named
  `ROLE@host` by `erdu worker ROLE`.
- A queue whose length in the broker (LLEN, all priority lists) is over its threshold is a
  performance incident (P2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import redis

from erdu_tasks.errors import TransientError
from erdu_tasks.ingest.accept import IngestRuntime
from erdu_tasks.model import Event, Severity
from erdu_tasks.names import ROLES
from erdu_tasks.monitors.config import CeleryConfig
from erdu_tasks.monitors.state import Decision, Observation, observe, report

PRIORITY_SEP = "\x06\x16"
"""kombu's Redis transport keeps priority n of queue q in the list `q + PRIORITY_SEP + n` (n > 0)."""

CURSOR = "celery:failed_tasks"


def live_roles(replies: dict[str, Any] | None) -> dict[str, list[str]]:
    """Role -> names of the workers that answered, from an inspect().ping() reply.

    A node is named `role@host`, or `role+role...@host` for one process serving several roles."""
    live: dict[str, list[str]] = {}
    for node in replies or {}:
        for role in node.split("@", 1)[0].split("+"):
            live.setdefault(role, []).append(node)
    return live


def queue_lengths(client: redis.Redis, queues: Iterable[str]) -> dict[str, int]:
    """Messages waiting in each queue (every priority level), read from the broker."""
    queues = list(queues)
    try:
        with client.pipeline(transaction=False) as pipe:
            for q in queues:
                pipe.llen(q)
                for level in range(1, 10):
                    pipe.llen(f"{q}{PRIORITY_SEP}{level}")
            counts = pipe.execute()
    except redis.RedisError as exc:
        raise TransientError(f"cannot read queue lengths from the broker: {exc}") from exc
    return {q: sum(counts[i * 10:(i + 1) * 10]) for i, q in enumerate(queues)}


def worker_observations(config: CeleryConfig, live: dict[str, list[str]], host: str | None) -> list[Observation]:
    """One condition per watched role: failing when no worker of it answered."""
    out = []
    for role in config.roles:
        nodes = live.get(role, [])
        severity = Severity.P1 if role in config.critical_roles else Severity.P2
        detail = f"{len(nodes)} live {role} worker(s): {', '.join(sorted(nodes))}" if nodes else \
            f"no {role} worker answered a ping"
        data = {"role": role, "workers": sorted(nodes)}
        event = Event(source="celery", message=f"No live ERDU worker for role {role}", severity=severity,
                      service="erdu", host=host, dedup_key=f"celery:no-worker:{role}",
                      labels={"role": role, "kind": "missing-worker"}, details=data)
        out.append(Observation(key=f"celery:worker:{role}", failing=not nodes, detail=detail, event=event,
                               sustained_for=config.missing_for, data=data))
    return out


def backlog_observations(config: CeleryConfig, lengths: dict[str, int], host: str | None) -> list[Observation]:
    """One condition per queue: failing when its backlog is over the threshold."""
    out = []
    for queue, length in lengths.items():
        limit = config.backlog_threshold(queue)
        data = {"queue": queue, "length": length, "threshold": limit}
        event = Event(source="celery", message=f"Queue {queue} overflowing: backlog over its threshold",
                      severity=Severity.P2, service="erdu", host=host, dedup_key=f"celery:backlog:{queue}",
                      labels={"queue": queue, "kind": "performance"}, details=data)
        out.append(Observation(key=f"celery:backlog:{queue}", failing=length > limit,
                               detail=f"{length} message(s) waiting in {queue} (threshold {limit})", event=event,
                               sustained_for=config.backlog_for, data=data))
    return out


def failure_event(row: dict[str, Any], severity: Severity, host: str | None) -> Event:
    """A failed_tasks row as a workflow-failure event (stable text per task and exception class)."""
    kind = row["error"].split(":", 1)[0].strip()[:100] or "error"
    details = {k: row[k] for k in ("task_id", "task_name", "stage", "incident_id", "error", "worker")}
    details["failed_at"] = row["failed_at"].isoformat()
    return Event(source="celery", message=f"{kind} in ERDU task {row['task_name']} (workflow failure)",
                 severity=severity, service="erdu", host=host, dedup_key=f"celery:failed:{row['task_name']}:{kind}",
                 labels={"task": row["task_name"][:200], "kind": "workflow-failure"}, details=details)


def report_failed_tasks(db, config: CeleryConfig, rt: IngestRuntime, notify: Callable[[str], None],
                        *, host: str | None, limit: int = 1000) -> int:
    """Report failed_tasks rows not reported yet; returns how many."""
    with db.transaction() as conn:
        conn.execute("INSERT INTO monitor_cursors (name) VALUES (%s) ON CONFLICT DO NOTHING", (CURSOR,))
        cursor = conn.execute("SELECT last_id FROM monitor_cursors WHERE name = %s FOR UPDATE",
                              (CURSOR,)).fetchone()["last_id"]
        rows = conn.execute(
            "SELECT * FROM failed_tasks WHERE id > %s ORDER BY id LIMIT %s", (cursor, limit)).fetchall()
        if not rows:
            return 0
        recent = [r for r in rows
                  if (datetime.now(r["failed_at"].tzinfo) - r["failed_at"]).total_seconds() <= config.failed_lookback]
        accepted = report(conn, [failure_event(r, config.failed_severity, host) for r in recent], rt)
        conn.execute("UPDATE monitor_cursors SET last_id = %s, updated_at = now() WHERE name = %s",
                     (rows[-1]["id"], CURSOR))
    for incident_id in accepted.new_incidents:
        notify(incident_id)
    return len(recent)


def run_celery(config: CeleryConfig, db, broker: redis.Redis, ping: Callable[[float], dict[str, Any] | None],
               rt: IngestRuntime, notify: Callable[[str], None], *, host: str | None,
               now: Callable[[], datetime]) -> dict[str, Any]:
    """One pass: failed tasks, worker presence, backlogs."""
    reported = report_failed_tasks(db, config, rt, notify, host=host) if config.failed_tasks else 0
    try:
        replies = ping(config.ping_timeout)
    except (redis.RedisError, OSError) as exc:
        raise TransientError(f"cannot ping workers through the broker: {exc}") from exc
    live = live_roles(replies)
    observations = worker_observations(config, live, host)
    observations += backlog_observations(config, queue_lengths(broker, ROLES), host)
    decisions: list[Decision] = observe(db, observations, rt, notify, now())
    return {
        "failed_tasks_reported": reported,
        "live": {r: len(n) for r, n in live.items()},
        "firing": [d.observation.key for d in decisions if d.verdict.value == "firing"],
        "recovered": [d.observation.key for d in decisions if d.verdict.value == "recovered"],
    }
