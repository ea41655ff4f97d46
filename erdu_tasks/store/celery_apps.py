"""The task history of the team's Celery apps, their workers, and the audit of what was done to them.

`celery_app_tasks` holds one row per (app, task id), the latest of what its events said (merged by
`upsert_tasks`, which a burst of events reaches as one statement per write); `prune` keeps it within the
retention. `search` is what the API, the CLI and the console list, `retry_chain` a task's retries;
`claim_retry` is the compare-and-set that makes a retry happen once; `record_action` writes the audit entry
of every retry and remote command.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

TASK_COLUMNS: tuple[str, ...] = (
    "name", "state", "args", "kwargs", "worker", "exception", "error", "traceback", "queue", "routing_key",
    "exchange", "root_id", "parent_id", "retries", "eta", "sent_at", "received_at", "started_at", "finished_at",
    "runtime", "args_value", "kwargs_value", "values_from")

RETRYABLE_STATES: tuple[str, ...] = ("FAILURE", "LOST")
"""A task in one of these may be sent again (a success, or one still running, may not)."""

_KEEP = ", ".join(f"{c} = COALESCE(EXCLUDED.{c}, t.{c})" for c in TASK_COLUMNS if c != "state")
_UPSERT = f"""
INSERT INTO celery_app_tasks AS t (app, task_id, {", ".join(TASK_COLUMNS)}, executions)
VALUES (%(app)s, %(task_id)s, {", ".join({"state": "COALESCE(%(state)s, 'PENDING')", "retries": "COALESCE(%(retries)s, 0)"}.get(c, f"%({c})s")
                                         for c in TASK_COLUMNS)}, %(executions)s)
ON CONFLICT (app, task_id) DO UPDATE SET {_KEEP},
    state = CASE WHEN %(state)s::text IS NULL THEN t.state ELSE EXCLUDED.state END,
    executions = t.executions + EXCLUDED.executions, updated_at = now()
"""


def upsert_tasks(conn: psycopg.Connection, app: str, rows: Sequence[Mapping[str, Any]]) -> int:
    """Merge history rows (each: task_id and any of TASK_COLUMNS, executions) into the table; returns how many."""
    if not rows:
        return 0
    params = [{"app": app, "executions": int(r.get("executions", 0)), **{c: _param(c, r.get(c)) for c in TASK_COLUMNS},
               "task_id": r["task_id"]} for r in sorted(rows, key=lambda r: r["task_id"])]
    with conn.cursor() as cur:
        cur.executemany(_UPSERT, params)
    return len(params)


def _param(column: str, value: Any) -> Any:
    return Jsonb(value) if column in ("args_value", "kwargs_value") and value is not None else value


def save_workers(conn: psycopg.Connection, app: str, workers: Iterable[Any]) -> None:
    """Write each worker's state as the watcher sees it (a `_Worker` of monitors.celery_apps)."""
    params = [{"app": app, "hostname": w.hostname, "state": w.state,
               "hb": datetime.fromtimestamp(w.last_seen).astimezone() if w.last_seen else None,
               "off": datetime.fromtimestamp(w.offline_at).astimezone() if w.offline_at else None,
               "active": w.active, "processed": w.processed, "ident": w.sw_ident, "ver": w.sw_ver,
               "load": Jsonb(w.loadavg) if w.loadavg is not None else None} for w in workers]
    if not params:
        return
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO celery_app_workers AS w (app, hostname, state, last_heartbeat, offline_at, active, processed,
                                                 sw_ident, sw_ver, loadavg)
            VALUES (%(app)s, %(hostname)s, %(state)s, %(hb)s, %(off)s, %(active)s, %(processed)s, %(ident)s,
                    %(ver)s, %(load)s)
            ON CONFLICT (app, hostname) DO UPDATE SET state = EXCLUDED.state, last_heartbeat = EXCLUDED.last_heartbeat,
                offline_at = EXCLUDED.offline_at, active = EXCLUDED.active, processed = EXCLUDED.processed,
                sw_ident = EXCLUDED.sw_ident, sw_ver = EXCLUDED.sw_ver, loadavg = EXCLUDED.loadavg, updated_at = now()
            """, params)


def list_workers(conn: psycopg.Connection, app: str | None = None) -> list[dict[str, Any]]:
    """Workers as last seen, per app, online first."""
    return conn.execute(
        "SELECT * FROM celery_app_workers WHERE %(app)s::text IS NULL OR app = %(app)s"
        " ORDER BY app, state <> 'online', hostname", {"app": app}).fetchall()


def prune(conn: psycopg.Connection, retention_days: float, *, batch: int = 10_000) -> int:
    """Delete history rows whose last change is older than the retention (at most `batch` at a time)."""
    cur = conn.execute(
        """
        DELETE FROM celery_app_tasks WHERE ctid IN (
            SELECT ctid FROM celery_app_tasks WHERE updated_at < now() - make_interval(secs => %s) LIMIT %s)
        """, (retention_days * 86400.0, batch))
    return cur.rowcount


@dataclass(frozen=True)
class TaskQuery:
    """What to search the history for; every given field must match (text matches are substrings)."""

    app: str | None = None
    task_id: str | None = None      # a task id or the start of one
    name: str | None = None         # exact, or a pattern with `*`
    worker: str | None = None
    exception: str | None = None    # in the exception type or its message
    text: str | None = None         # in the args or kwargs reprs
    state: str | None = None
    since: datetime | None = None
    retried: bool | None = None     # True: only those retried; False: only those not yet
    limit: int = 100


def _like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _where(q: TaskQuery) -> tuple[str, dict[str, Any]]:
    where, params = [], {}
    if q.app:
        where.append("app = %(app)s")
        params["app"] = q.app
    if q.task_id:
        where.append("task_id LIKE %(tid)s")
        params["tid"] = _like(q.task_id) + "%"
    if q.name:
        if "*" in q.name:
            where.append("name LIKE %(name)s")
            params["name"] = _like(q.name).replace("*", "%")
        else:
            where.append("name = %(name)s")
            params["name"] = q.name
    if q.worker:
        where.append("worker = %(worker)s")
        params["worker"] = q.worker
    if q.exception:
        where.append("(exception ILIKE %(exc)s OR error ILIKE %(exc)s)")
        params["exc"] = "%" + _like(q.exception) + "%"
    if q.text:
        where.append("(coalesce(args, '') || ' ' || coalesce(kwargs, '')) ILIKE %(text)s")
        params["text"] = "%" + _like(q.text) + "%"
    if q.state:
        where.append("state = %(state)s")
        params["state"] = q.state.upper()
    if q.since:
        where.append("updated_at >= %(since)s")
        params["since"] = q.since
    if q.retried is not None:
        where.append("retried_as IS NOT NULL" if q.retried else "retried_as IS NULL")
    return (" WHERE " + " AND ".join(where)) if where else "", params


def search(conn: psycopg.Connection, q: TaskQuery) -> list[dict[str, Any]]:
    """History rows matching the query, most recently changed first."""
    where, params = _where(q)
    return conn.execute(f"SELECT * FROM celery_app_tasks{where} ORDER BY updated_at DESC, task_id LIMIT %(limit)s",
                        {**params, "limit": q.limit}).fetchall()


def get_task(conn: psycopg.Connection, app: str, task_id: str, *, for_update: bool = False) -> dict[str, Any] | None:
    """One task's row, or None."""
    return conn.execute("SELECT * FROM celery_app_tasks WHERE app = %s AND task_id = %s"
                        + (" FOR UPDATE" if for_update else ""), (app, task_id)).fetchone()


def retry_chain(conn: psycopg.Connection, app: str, task_id: str, *, limit: int = 50) -> list[dict[str, Any]]:
    """The task's retries, first attempt to last: its `retried_from` links back and `retried_as` links on
    (at most `limit` rows, a loop in the links is followed once)."""
    row = get_task(conn, app, task_id)
    if row is None:
        return []
    chain, seen = [row], {task_id}
    while chain[0]["retried_from"] and chain[0]["retried_from"] not in seen and len(chain) < limit:
        seen.add(chain[0]["retried_from"])
        earlier = get_task(conn, app, chain[0]["retried_from"])
        if earlier is None:
            break
        chain.insert(0, earlier)
    while chain[-1]["retried_as"] and chain[-1]["retried_as"] not in seen and len(chain) < limit:
        seen.add(chain[-1]["retried_as"])
        later = get_task(conn, app, chain[-1]["retried_as"])
        if later is None:
            break
        chain.append(later)
    return chain


def claim_retry(conn: psycopg.Connection, app: str, task_id: str, new_id: str, by: str) -> bool:
    """Mark a retryable task as retried as `new_id` (compare-and-set: False if it was retried or is not retryable)."""
    cur = conn.execute(
        "UPDATE celery_app_tasks SET retried_as = %s, retried_by = %s, retried_at = now(), updated_at = now()"
        " WHERE app = %s AND task_id = %s AND retried_as IS NULL AND state = ANY(%s)",
        (new_id, by[:200], app, task_id, list(RETRYABLE_STATES)))
    return cur.rowcount == 1


def record_retry_sent(conn: psycopg.Connection, app: str, old: Mapping[str, Any], new_id: str, queue: str,
                      values: tuple[list[Any], dict[str, Any]] | None = None) -> None:
    """The new task's row, linked to the one it retries, until its own events fill it in; `values` are the
    args and kwargs it was sent with (kept as its exact values)."""
    conn.execute(
        """
        INSERT INTO celery_app_tasks (app, task_id, name, state, args, kwargs, queue, routing_key, exchange,
                                      root_id, parent_id, retried_from, sent_at, args_value, kwargs_value,
                                      values_from)
        VALUES (%s, %s, %s, 'SENT', %s, %s, %s, %s, %s, %s, %s, %s, now(), %s, %s, %s)
        ON CONFLICT (app, task_id) DO UPDATE SET retried_from = EXCLUDED.retried_from
        """, (app, new_id, old["name"], old["args"], old["kwargs"], queue, old.get("routing_key") or queue,
              old.get("exchange"), old.get("root_id"), old.get("parent_id"), old["task_id"],
              Jsonb(values[0]) if values else None, Jsonb(values[1]) if values else None,
              "sent by a retry" if values else None))


def record_action(conn: psycopg.Connection, *, app: str, action: str, by: str, ok: bool, target: str | None = None,
                  note: str | None = None, details: Mapping[str, Any] | None = None) -> int:
    """An audit entry: who did what to which app, and how it went; returns its id."""
    row = conn.execute(
        "INSERT INTO celery_app_actions (app, action, target, by, note, ok, details) VALUES (%s, %s, %s, %s, %s, %s, %s)"
        " RETURNING id", (app, action, target, by[:200], (note or None) and note[:2000], ok, Jsonb(dict(details or {})))
    ).fetchone()
    return int(row["id"])


def list_actions(conn: psycopg.Connection, app: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Audit entries, newest first."""
    return conn.execute("SELECT * FROM celery_app_actions WHERE %(app)s::text IS NULL OR app = %(app)s"
                        " ORDER BY id DESC LIMIT %(limit)s", {"app": app, "limit": limit}).fetchall()
