"""`erdu celery-apps`: watch the team's Celery apps, search their task history, retry failed tasks."""

from __future__ import annotations

import json
import signal
import threading
from datetime import datetime, timezone
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from erdu_tasks.cli import common

celery_apps_app = typer.Typer(help="The team's own Celery apps (monitors.celery_apps): the event watcher, task "
                                   "history, workers, safe retries and the audit of them.", no_args_is_help=True)

AppOpt = Annotated[Optional[str], typer.Option("--app", help="Only this app (its name in monitors.celery_apps)")]
ByOpt = Annotated[Optional[str], typer.Option("--by", help="Who is acting (default: ERDU_USER, else your login)")]
NoteOpt = Annotated[Optional[str], typer.Option("--note", help="Why, kept on the audit entry")]


def _config(rt):
    config = rt.monitors.celery_apps
    if config is None:
        common.fail("no monitors.celery_apps section in the settings: there is no Celery app to watch")
    return config


def _json_default(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


@celery_apps_app.command("watch")
def watch_cmd(
    app: Annotated[Optional[list[str]], typer.Option("--app", help="Watch only these apps (repeatable)")] = None,
) -> None:
    """Consume every configured app's Celery events until stopped (SIGTERM / Ctrl-C): the long-running watcher."""
    from erdu_tasks.errors import PermanentError
    from erdu_tasks.tasks import celery_apps

    rt = common.runtime()
    config = _config(rt)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        celery_apps.watch(rt, config, stop, only=app or ())
    except PermanentError as exc:
        common.fail(str(exc))
    common.err.print("stopped", highlight=False)


def _query(app, task_id, name, worker, exception, text, state, since, limit, retried=None):
    from erdu_tasks.store.celery_apps import TaskQuery

    after = None
    if since:
        from erdu_tasks.settings.common import parse_duration

        try:
            after = datetime.now(timezone.utc) - parse_duration(since)
        except ValueError as exc:
            common.fail(f"--since: {exc}")
    return TaskQuery(app=app, task_id=task_id, name=name, worker=worker, exception=exception, text=text,
                     state=state, since=after, retried=retried, limit=limit)


TaskIdOpt = Annotated[Optional[str], typer.Option("--id", help="A task id, or the start of one")]
NameOpt = Annotated[Optional[str], typer.Option("--name", help="Task name (`*` matches anything)")]
WorkerOpt = Annotated[Optional[str], typer.Option("--worker", help="Worker hostname, e.g. celery@web-1")]
ExcOpt = Annotated[Optional[str], typer.Option("--exception", help="Text in the exception type or message")]
TextOpt = Annotated[Optional[str], typer.Option("--text", help="Text in the recorded args or kwargs")]
StateOpt = Annotated[Optional[str], typer.Option("--state", help="FAILURE, SUCCESS, STARTED, LOST, ...")]
SinceOpt = Annotated[Optional[str], typer.Option("--since", help="Changed within this long, e.g. 1h, 30m")]
LimitOpt = Annotated[int, typer.Option("--limit", min=1, max=10000, help="At most this many")]


@celery_apps_app.command("tasks")
def tasks_cmd(app: AppOpt = None, task_id: TaskIdOpt = None, name: NameOpt = None, worker: WorkerOpt = None,
              exception: ExcOpt = None, text: TextOpt = None, state: StateOpt = None, since: SinceOpt = None,
              limit: LimitOpt = 50,
              as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False) -> None:
    """Search the task history (newest change first) by id, name, worker, exception and argument text."""
    from erdu_tasks.store import celery_apps as history

    rt = common.runtime()
    query = _query(app, task_id, name, worker, exception, text, state, since, limit)
    with rt.db.transaction() as conn:
        rows = history.search(conn, query)
    if as_json:
        for r in rows:
            print(json.dumps(r, default=_json_default))
        return
    table = Table(title=f"{len(rows)} task(s)")
    for col in ("App", "Task id", "Name", "State", "Worker", "Exception", "Args", "Changed"):
        table.add_column(col)
    for r in rows:
        table.add_row(common.shown(r["app"]), common.shown(r["task_id"]), common.shown(r["name"], limit=40),
                      r["state"], common.shown(r["worker"] or "-"), common.shown(r["exception"] or "-", limit=30),
                      common.shown(r["args"] or "", limit=40), r["updated_at"].isoformat(timespec="seconds"))
    common.console.print(table)


def _row_or_fail(rt, app: str, task_id: str) -> dict[str, Any]:
    from erdu_tasks.store import celery_apps as history

    with rt.db.transaction() as conn:
        row = history.get_task(conn, app, task_id)
    if row is None:
        common.fail(f"no task {task_id} of app {app} in the history", 1)
    return row


@celery_apps_app.command("show")
def show_cmd(app: Annotated[str, typer.Argument(help="The app's name")],
             task_id: Annotated[str, typer.Argument(help="The task id")],
             as_json: Annotated[bool, typer.Option("--json", help="JSON")] = False) -> None:
    """One task whole: arguments as recorded, state, times, worker, exception and traceback, retry links."""
    rt = common.runtime()
    row = _row_or_fail(rt, app, task_id)
    if as_json:
        print(json.dumps(row, default=_json_default))
        return
    for key, value in row.items():
        if key == "traceback" or value is None:
            continue
        print(f"{key}: {common.plain(value.isoformat() if isinstance(value, datetime) else value)}")
    if row["traceback"]:
        print("traceback:\n" + common.plain(row["traceback"], multiline=True))


@celery_apps_app.command("workers")
def workers_cmd(app: AppOpt = None, as_json: Annotated[bool, typer.Option("--json", help="JSON lines")] = False
                ) -> None:
    """Each app's workers as the watcher last saw them: online, offline (said goodbye) or lost (went silent)."""
    from erdu_tasks.store import celery_apps as history

    rt = common.runtime()
    with rt.db.transaction() as conn:
        rows = history.list_workers(conn, app)
    if as_json:
        for r in rows:
            print(json.dumps(r, default=_json_default))
        return
    table = Table(title=f"{len(rows)} worker(s)")
    for col in ("App", "Worker", "State", "Last heartbeat", "Active", "Processed"):
        table.add_column(col)
    for r in rows:
        hb = r["last_heartbeat"].isoformat(timespec="seconds") if r["last_heartbeat"] else "-"
        table.add_row(common.shown(r["app"]), common.shown(r["hostname"]), r["state"], hb, str(r["active"]),
                      str(r["processed"]))
    common.console.print(table)


@celery_apps_app.command("actions")
def actions_cmd(app: AppOpt = None, limit: LimitOpt = 50) -> None:
    """The audit: every retry and remote command, who asked, and how it went (newest first)."""
    from erdu_tasks.store import celery_apps as history

    rt = common.runtime()
    with rt.db.transaction() as conn:
        rows = history.list_actions(conn, app, limit)
    for r in rows:
        print(common.plain(f"{r['at'].isoformat(timespec='seconds')} {r['app']} {r['action']} {r['target'] or '-'} "
                           f"by {r['by']}: {'ok' if r['ok'] else 'refused'} {json.dumps(r['details'])}"
                           + (f" ({r['note']})" if r["note"] else "")))


@celery_apps_app.command("retry")
def retry_cmd(app: Annotated[str, typer.Argument(help="The app's name")],
              task_id: Annotated[str, typer.Argument(help="The failed task's id")],
              yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")] = False,
              by: ByOpt = None, note: NoteOpt = None) -> None:
    """Send a failed (or lost) task's original message again, under a new id linked to the old one."""
    from erdu_tasks.errors import TransientError
    from erdu_tasks.tasks import celery_apps

    rt = common.runtime()
    config = _config(rt)
    row = _row_or_fail(rt, app, task_id)
    try:
        args, kwargs = celery_apps.replayable(row)
    except celery_apps.RetryRefused as exc:
        common.fail(str(exc), 1)
    target = config.app(app)
    queue = row["queue"] or (target.queue_for(row["name"] or "") if target else "?")
    print(common.plain(f"{row['name']}[{task_id}] {row['state']}: args={json.dumps(args)} "
                       f"kwargs={json.dumps(kwargs)} -> queue {queue} "
                       f"(values from {row.get('values_from') or 'event reprs'})"))
    if not yes and not typer.confirm("Send it again?", default=False):
        common.fail("not retried", 1)
    try:
        done = celery_apps.retry(rt, config, app, task_id, by=by or common.who(), note=note)
    except (celery_apps.RetryRefused, TransientError) as exc:
        common.fail(str(exc), 1)
    print(f"retried {task_id} as {done.new_id} on queue {done.queue}")


@celery_apps_app.command("retry-many")
def retry_many_cmd(app: AppOpt = None, name: NameOpt = None, worker: WorkerOpt = None, exception: ExcOpt = None,
                   text: TextOpt = None, since: SinceOpt = None, limit: LimitOpt = 100,
                   rate: Annotated[float, typer.Option("--rate", min=0.01, max=1000,
                                                       help="Retries per second, at most")] = 5.0,
                   yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")] = False,
                   by: ByOpt = None, note: NoteOpt = None) -> None:
    """Retry every failed task not yet retried that the filters find, at a rate (newest first)."""
    from erdu_tasks.store import celery_apps as history
    from erdu_tasks.tasks import celery_apps

    rt = common.runtime()
    config = _config(rt)
    query = _query(app, None, name, worker, exception, text, None, since, limit, retried=False)
    with rt.db.transaction() as conn:
        found = [r for r in history.search(conn, query) if r["state"] in history.RETRYABLE_STATES]
    if not found:
        common.fail("no failed task not yet retried matches", 1)
    print(f"{len(found)} failed task(s) match, e.g. " + ", ".join(
        common.plain(f"{r['name']}[{r['task_id']}]") for r in found[:5]))
    if not yes and not typer.confirm(f"Retry them at {rate:g}/s?", default=False):
        common.fail("not retried", 1)
    results = celery_apps.retry_many(rt, config, query, by=by or common.who(), rate=rate, note=note)
    refused = 0
    for app_name, task_id, outcome in results:
        if isinstance(outcome, str):
            refused += 1
            common.err.print(f"skipped {common.shown(app_name)}/{common.shown(task_id)}: {common.shown(outcome)}",
                             highlight=False)
        else:
            print(f"retried {app_name}/{task_id} as {outcome.new_id}")
    print(f"{len(results) - refused} retried, {refused} skipped")
    if refused and refused == len(results):
        raise typer.Exit(1)
