"""The `erdu` command line: run the stack or one part of it, send events, work incidents."""

from __future__ import annotations

import json
import os
import signal
import sys
from datetime import datetime, timezone
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from erdu_tasks.errors import ConfigError, ErduError, ServiceUnreachable
from erdu_tasks.model import Severity, Status
from erdu_tasks.names import ROLES
from erdu_tasks.settings import get_settings
from erdu_tasks.cli.common import (close_runtime, console, err, fail, incident_id_of, load_settings, plain, runtime,
                                   shown, who)
from erdu_tasks.cli.silences import silence_app
from erdu_tasks.cli.heartbeats import heartbeat, heartbeats_app
from erdu_tasks.cli.oncall import oncall_app
from erdu_tasks.cli.celery_apps import celery_apps_app
from erdu_tasks.cli.grouping import grouping_app, incidents_why

app = typer.Typer(help="ERDU: self-healing incident response on Celery, Redis and Postgres.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
incidents_app = typer.Typer(help="List, inspect and act on incidents.", no_args_is_help=True)
failed_app = typer.Typer(help="Stage tasks that failed for good, and re-driving them.", no_args_is_help=True)
app.add_typer(incidents_app, name="incidents")
app.add_typer(failed_app, name="failed")
runbooks_app = typer.Typer(help="Check and list runbooks.", no_args_is_help=True)
app.add_typer(runbooks_app, name="runbooks")
app.add_typer(silence_app, name="silence")
app.add_typer(heartbeats_app, name="heartbeats")
app.add_typer(grouping_app, name="grouping")
incidents_app.command("why")(incidents_why)
app.command("heartbeat")(heartbeat)
app.add_typer(oncall_app, name="oncall")
app.add_typer(celery_apps_app, name="celery-apps")
rules_app = typer.Typer(help="List the classification rules.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


@app.command()
def migrate() -> None:
    """Create the database if needed and apply pending schema migrations (safe to repeat)."""
    from erdu_tasks.store.migrate import migrate as run

    settings = load_settings()
    try:
        applied = run(settings.database_url)
    except ServiceUnreachable as exc:
        fail(str(exc))
    console.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


def worker_roles(spec: str) -> list[str]:
    """The roles one worker process serves: one role, several joined by commas, or `all`."""
    roles = list(ROLES) if spec == "all" else [r.strip() for r in spec.split(",") if r.strip()]
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        fail(f"unknown role {', '.join(map(repr, unknown)) or repr(spec)}; choose one of: {', '.join(ROLES)}, "
             "several joined by commas, or all")
    return list(dict.fromkeys(roles))


def worker_argv(roles: list[str], settings, *, concurrency: int | None = None, pool: str | None = None,
                hostname: str | None = None, loglevel: str = "INFO") -> list[str]:
    """Celery's worker arguments for the roles: their queues, pool, pool size, prefetch and node name.

    One role runs with its own pool settings (workers/ROLE.py). Several roles in one process (a small
    installation, a laptop) share a thread pool as large as their pools together; their queues stay
    apart, so they can be split into their own processes at any time. The node name is
    `role[+role...]@host`, which the Celery health monitor reads to know which roles are alive.
    """
    from workers import pool_for

    pools = [pool_for(r) for r in roles]
    sizes = [settings.worker_concurrency.get(r, p.concurrency) for r, p in zip(roles, pools)]
    if len(roles) == 1:
        kind, size, prefetch = pools[0].pool, sizes[0], pools[0].prefetch_multiplier
    else:
        kind, size, prefetch = "threads", sum(sizes), 1
    argv = [
        "worker", "-Q", ",".join(p.queue for p in pools), "-n", f"{'+'.join(roles)}@{hostname or '%h'}",
        "-c", str(concurrency or size), "-P", pool or kind, "--prefetch-multiplier", str(prefetch),
        "-E", "--without-gossip", "--without-mingle", "-l", loglevel,
    ]
    if len(roles) == 1 and pools[0].max_tasks_per_child:
        argv += ["--max-tasks-per-child", str(pools[0].max_tasks_per_child)]
    if len(roles) == 1 and pools[0].max_memory_per_child_kb:
        argv += ["--max-memory-per-child", str(pools[0].max_memory_per_child_kb)]
    return argv


def db_pool_size(argv: list[str]) -> int:
    """Postgres connections a worker process needs: one per thread of a thread pool plus one for the
    process's own checks; a prefork or solo process runs one task at a time, so 2."""
    kind = argv[argv.index("-P") + 1]
    size = int(argv[argv.index("-c") + 1])
    return size + 1 if kind == "threads" else 2


def run_worker(spec: str, *, concurrency: int | None = None, pool: str | None = None,
               hostname: str | None = None, loglevel: str = "INFO") -> None:
    """Start a worker for one role (or several), consuming only those roles' queues."""
    from erdu_tasks.store.preflight import check_all

    roles = worker_roles(spec)
    if hostname is not None and (not hostname or any(c in hostname for c in "@+ /%")):
        fail(f"--hostname {hostname!r}: a host name may not be empty or hold '@', '+', '/', '%' or spaces")
    settings = load_settings()
    try:
        check_all(settings)
    except ServiceUnreachable as exc:
        fail(str(exc))
    _check_config(settings)
    argv = worker_argv(roles, settings, concurrency=concurrency, pool=pool, hostname=hostname, loglevel=loglevel)
    if "ERDU_DB_POOL_MAX" not in os.environ and "db_pool_max" not in settings.model_fields_set:
        os.environ["ERDU_DB_POOL_MAX"] = str(db_pool_size(argv))
        get_settings.cache_clear()
    from erdu_tasks.app import ROLE_TASK_MODULES
    from erdu_tasks.app import app as celery_app
    from erdu_tasks.celery_ext.start import run_worker as start_worker

    celery_app.conf.include = list(dict.fromkeys(m for r in roles for m in ROLE_TASK_MODULES[r]))
    raise typer.Exit(start_worker(celery_app, argv))


def _check_config(settings) -> None:
    """Load rules, runbooks and the catalog once so a bad file fails at start-up, naming file and reason."""
    from erdu_tasks.catalog import Catalog
    from erdu_tasks.ingest.detect.rules import RuleSet
    from erdu_tasks.escalation.runs import check_settings as check_escalation_settings
    from erdu_tasks.monitors.config import load_monitors
    from erdu_tasks.monitors.config import warnings as monitor_warnings
    from erdu_tasks.fixer.runbooks import RunbookSet

    try:
        RuleSet.load(settings.rules_file)
        RunbookSet.load(settings.runbooks_dir)
        check_escalation_settings(settings, Catalog.load(settings.catalog_file))
        monitors = load_monitors(settings.monitors)
        from erdu_tasks.brains import check_settings as check_role_settings   # commander, learning, brain sections

        check_role_settings(settings)
    except ConfigError as exc:
        fail(str(exc))
    for warning in monitor_warnings(monitors):
        err.print(f"[yellow]warning:[/] {warning}", highlight=False)


@app.command()
def worker(
    role: Annotated[str, typer.Argument(
        help=f"One of: {', '.join(ROLES)}; several joined by commas, or `all`, share one process")],
    concurrency: Annotated[Optional[int], typer.Option(help="Override the pool size from workers/")] = None,
    pool: Annotated[Optional[str], typer.Option(help="Override the pool type: prefork, threads or solo")] = None,
    hostname: Annotated[Optional[str], typer.Option(
        help="The host part of the node name ROLE@HOST (default: this machine's name); one per process on a host")] = None,
    loglevel: Annotated[str, typer.Option(help="Celery log level")] = "INFO",
) -> None:
    """Run the worker pool of one role (it consumes only that role's queue), or of several in one process."""
    from erdu_tasks.celery_ext import collector

    with collector.held_until_worker_init():   # a seventh of the start-up's CPU (erdu_tasks/celery_ext/collector.py)
        run_worker(role, concurrency=concurrency, pool=pool, hostname=hostname, loglevel=loglevel)


@app.command()
def beat(loglevel: Annotated[str, typer.Option(help="Celery log level")] = "INFO") -> None:
    """Run Celery beat with a Redis lock: a second beat waits instead of double-scheduling."""
    from erdu_tasks.app import app as celery_app
    from erdu_tasks.celery_ext.beat import run_beat
    from erdu_tasks.store.preflight import check_redis

    settings = load_settings()
    try:
        check_redis(settings.redis_url)
    except ServiceUnreachable as exc:
        fail(str(exc))
    _check_config(settings)
    run_beat(celery_app, settings, loglevel=loglevel)


@app.command("api")
def api_command(
    host: Annotated[Optional[str], typer.Option(help="Address to listen on (default 127.0.0.1; "
                                                     "anything else needs ERDU_API_TOKEN)")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default 8080)")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Run the HTTP API: events, Alertmanager and PagerDuty webhooks, incidents (OpenAPI at /docs)."""
    from erdu_tasks.api.server import serve
    from erdu_tasks.store.preflight import check_all

    settings = load_settings()
    try:
        check_all(settings)
        serve(settings, host=host, port=port, log_level=log_level)
    except (ServiceUnreachable, ConfigError) as exc:
        fail(str(exc))


@app.command()
def up(
    api: Annotated[bool, typer.Option(help="Also run the HTTP API")] = True,
    flower: Annotated[bool, typer.Option(help="Also run Flower")] = True,
) -> None:
    """Run the whole stack in the foreground: migrate, one worker per role, beat (Ctrl-C stops all)."""
    from erdu_tasks.devstack.supervisor import run_up

    settings = load_settings()
    try:
        code = run_up(settings, with_api=api, with_flower=flower, console=console)
    except (ServiceUnreachable, ErduError) as exc:
        fail(str(exc))
    raise typer.Exit(code)


@app.command()
def send(
    message: Annotated[str, typer.Argument(help="What happened, e.g. 'Database connection failed'")],
    service: Annotated[Optional[str], typer.Option(help="The service it happened in")] = None,
    severity: Annotated[Optional[str], typer.Option(help="Severity hint P1..P5")] = None,
    source: Annotated[str, typer.Option(help="Where the event comes from")] = "cli",
    host: Annotated[Optional[str], typer.Option(help="The host it happened on")] = None,
    label: Annotated[Optional[list[str]], typer.Option(help="key=value, repeatable")] = None,
    count: Annotated[int, typer.Option(help="How many times it happened")] = 1,
    dedup_key: Annotated[Optional[str], typer.Option(help="Your own dedup key (overrides the fingerprint)")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for ingest to say which incident it became "
                                             "(0: do not wait)", min=0, max=300)] = 10.0,
) -> None:
    """Send one event to ERDU's ingest queue, then say which incident it became."""
    from erdu_tasks.client.producer import Client, ClientError

    labels = {}
    for item in label or []:
        if "=" not in item:
            fail(f"label {item!r} is not key=value")
        k, v = item.split("=", 1)
        labels[k] = v
    event = {"message": message, "source": source, "count": count, "labels": labels}
    for key, value in (("service", service), ("severity", severity), ("host", host), ("dedup_key", dedup_key)):
        if value is not None:
            event[key] = value
    settings = load_settings()
    try:
        task_id = Client.from_settings(settings).send(event)
    except ClientError as exc:
        fail(str(exc))
    console.print(f"sent (task {task_id})")
    if wait:
        _say_where_it_landed(settings, event, task_id, wait)


def _say_where_it_landed(settings, event: dict, task_id: str, wait: float) -> None:
    """Wait for ingest's receipt of the message, then name the incident the event's fingerprint is on."""
    import time

    import psycopg

    from erdu_tasks.errors import InvalidEvent
    from erdu_tasks.ingest.accept import fold
    from erdu_tasks.ingest.detect.rules import RuleSet
    from erdu_tasks.ingest.formats.event import parse_events

    find = f"erdu incidents ls --service {shown(event['service'])}" if event.get("service") else "erdu incidents ls"
    try:
        groups, _ = fold(parse_events(event), RuleSet.load(settings.rules_file))
    except (InvalidEvent, ConfigError) as exc:
        err.print(f"ingest will refuse it: {shown(exc)}", highlight=False, soft_wrap=True)
        return
    if not groups:
        console.print("an ignore rule drops this event: it opens no incident", highlight=False, soft_wrap=True)
        return
    deadline = time.monotonic() + wait
    try:
        with psycopg.connect(settings.database_url, connect_timeout=3, autocommit=True) as conn:
            while time.monotonic() < deadline:
                if conn.execute("SELECT 1 FROM ingest_receipts WHERE message_id = %s", (task_id,)).fetchone():
                    row = conn.execute("SELECT id, status, occurrences FROM incidents WHERE fingerprint = %s"
                                       " ORDER BY created_at DESC LIMIT 1", (groups[0].fingerprint,)).fetchone()
                    if row:
                        console.print(f"incident {row[0]} ({row[1]}, {row[2]} occurrence(s))", highlight=False, soft_wrap=True)
                        return
                time.sleep(0.2)
    except psycopg.Error as exc:
        err.print(f"cannot read the incident store to say where it went ({shown(exc)}); try: {find}",
                  highlight=False, soft_wrap=True)
        return
    console.print(f"not ingested within {wait:g} s (is an ingest worker running?); then: {find}", highlight=False, soft_wrap=True)


def _age(ts: datetime | None) -> str:
    if ts is None:
        return "-"
    seconds = (datetime.now(timezone.utc) - ts).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _allowed(option: str, values: list[str] | None, allowed: list[str]) -> list[str] | None:
    """Refuse a filter value that can never match, naming the values that can (exit code 2)."""
    wrong = [v for v in values or [] if v not in allowed]
    if wrong:
        fail(f"{option} {', '.join(map(repr, wrong))}: not one of {', '.join(allowed)}")
    return values


@incidents_app.command("ls")
def incidents_ls(
    status: Annotated[Optional[list[str]], typer.Option(help="Filter by status (repeatable)")] = None,
    severity: Annotated[Optional[list[str]], typer.Option(help="Filter by severity (repeatable)")] = None,
    service: Annotated[Optional[str], typer.Option(help="Filter by service")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first")] = 50,
    after: Annotated[Optional[str], typer.Option(help="The next-page cursor a previous listing printed")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """List incidents, newest first; when there are more, the cursor of the next page (on stderr)."""
    from erdu_tasks.store import incidents as store

    status = _allowed("--status", status, [s.value for s in Status])
    severity = _allowed("--severity", [v.upper() for v in severity or []] or None, [s.value for s in Severity])
    rt = runtime()
    try:
        with rt.db.transaction() as conn:
            rows = store.list_incidents(conn, statuses=status, severities=severity, service=service,
                                        limit=limit + 1, after=after)
    except store.BadCursor as exc:
        fail(f"--after: {exc}")
    more, rows = len(rows) > limit, rows[:limit]
    if more and rows:
        err.print(f"next page: --after {store.encode_cursor(rows[-1])}", highlight=False)
    if as_json:
        for i in rows:
            first = i.first_occurrence(1)
            print(json.dumps({"id": i.id, "severity": i.severity.value, "status": i.status.value,
                              "title": i.title, "message": first[0] if first else i.title,
                              "service": i.service, "occurrences": i.occurrences,
                              "created_at": i.created_at.isoformat() if i.created_at else None}))
        return
    console.print(_incident_table(rows, f"{len(rows)} incident(s)"))


def _incident_table(rows: list, title: str) -> Table:
    table = Table(title=title)
    # The id is what every other command takes: shown whole, on one line, at any width (the title wraps).
    table.add_column("ID", no_wrap=True, min_width=max((len(i.id) for i in rows), default=2))
    for col in ("Sev", "Status", "Service", "Title", "Count", "Created"):
        table.add_column(col)
    for i in rows:
        first = i.first_occurrence(1)
        concrete = f"\n[dim]{shown(first[0], limit=60)}[/]" if first else ""   # the title is a template
        table.add_row(i.id, i.severity.value, i.status.value, shown(i.service or "-"),
                      shown(i.title, limit=60) + concrete, str(i.occurrences), _age(i.created_at))
    return table


@incidents_app.command("watch")
def incidents_watch(
    interval: Annotated[float, typer.Option(min=0.1, max=3600, help="Seconds between two looks at Postgres")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print the open incidents and exit")] = False,
    limit: Annotated[int, typer.Option(min=1, help="How many open incidents the first table shows")] = 30,
) -> None:
    """The open incidents, then every change as it happens (new incidents, status changes, notes); Ctrl-C stops."""
    import time

    import psycopg

    from erdu_tasks.model import OPEN_STATUSES
    from erdu_tasks.store import incidents as store
    from erdu_tasks.store.watch import Follower

    # Ctrl-C stops it even when started by a parent that ignores SIGINT (which a child inherits).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rt = runtime()
    statuses = sorted(s.value for s in OPEN_STATUSES)
    try:
        with rt.db.transaction() as conn:
            rows = store.list_incidents(conn, statuses=statuses, limit=limit)
            follower = Follower.from_now(conn)
        console.print(_incident_table(rows, f"{len(rows)} open incident(s), newest first"))
        if once:
            return
        console.print(f"watching every {interval:g} s; Ctrl-C stops", highlight=False)
        lost = False
        while True:
            time.sleep(interval)
            try:
                with rt.db.transaction() as conn:
                    changes = follower.poll(conn)
            except psycopg.Error as exc:
                if not lost:
                    err.print(f"cannot read Postgres ({shown(type(exc).__name__)}); trying again", highlight=False)
                lost = True
                continue
            if lost:
                err.print("Postgres answers again", highlight=False)
                lost = False
            for c in changes:
                what = ("new     " if c.is_new else "        ") + f"{c.incident_id}  {c.severity} {c.status:<17}"
                move = f"{c.from_status or ''} → {c.to_status}  " if c.to_status else ""
                said = shown(c.title, limit=60) if c.is_new else shown(f"{move}{c.actor}: {c.what}", limit=120)
                console.print(f"{c.at:%H:%M:%S}  {what}  {shown(c.service or '-')}  {said}", highlight=False,
                              soft_wrap=True)
    except KeyboardInterrupt:
        console.print("stopped watching", highlight=False)
    finally:
        rt.db.close()


SHOW_LINES = 60
"""How many lines of the first occurrence `incidents show` prints."""


@incidents_app.command("show")
def incidents_show(incident_id: str) -> None:
    """One incident with its timeline."""
    from erdu_tasks.store import incidents as store

    rt = runtime()
    incident_id = incident_id_of(rt, incident_id)
    with rt.db.transaction() as conn:
        i = store.get_incident(conn, incident_id, with_timeline=True)
    if i is None:
        fail(f"no incident {incident_id}", 1)
    console.print(f"[bold]{shown(i.id)}[/]  {i.severity.value}  {i.status.value}  {shown(i.title)}", highlight=False)
    console.print(f"service: {shown(i.service or '-')}  host: {shown(i.host or '-')}  source: {shown(i.source)}  "
                  f"occurrences: {i.occurrences}  fingerprint: {shown(i.fingerprint)}", highlight=False)
    if i.labels:
        console.print("labels: " + "  ".join(f"{shown(k)}={shown(v)}" for k, v in sorted(i.labels.items())),
                      highlight=False)
    if i.tags:
        console.print("tags: " + ", ".join(shown(t) for t in i.tags), highlight=False)
    if i.description and i.description.strip() != i.title.strip():
        lines = i.description.splitlines()
        console.print("first occurrence (message, traceback):", highlight=False)
        console.print(escape(plain("\n".join(lines[:SHOW_LINES]), multiline=True)), highlight=False, soft_wrap=True)
        if len(lines) > SHOW_LINES:
            console.print(f"… {len(lines) - SHOW_LINES} more line(s): `erdu incidents report {i.id}` or the API",
                          highlight=False)
    if i.root_cause:
        console.print(f"root cause: {shown(i.root_cause)}", highlight=False)
    if i.report_path:
        console.print(f"report: {shown(i.report_path)}", highlight=False)
    table = Table(title="timeline")
    for col in ("When", "Who", "Worker", "Status", "What"):
        table.add_column(col)
    for t in i.timeline:
        status = f"{t.from_status or ''} → {t.to_status}" if t.to_status else ""
        table.add_row(t.at.strftime("%H:%M:%S.%f")[:-3], shown(t.actor), shown(t.worker or ""), status,
                      shown(t.what))   # whole: the table wraps it
    console.print(table)


@incidents_app.command("report")
def incidents_report(incident_id: str) -> None:
    """Print the incident's Markdown report: the final one once closed, "what we know so far" once escalated."""
    from erdu_tasks.tasks.pipeline import current_report

    rt = runtime()
    incident_id = incident_id_of(rt, incident_id)
    with rt.db.transaction() as conn:
        found = current_report(conn, rt, incident_id)
        status = conn.execute("SELECT status FROM incidents WHERE id = %s", (incident_id,)).fetchone()
    if found is None:
        fail(f"{incident_id} has no report yet (status {status['status'] if status else 'unknown'}: ERDU is still "
             "handling it; the report starts when it is escalated to people, and is final at close)", 1)
    print(plain(found[1], multiline=True))


By = Annotated[Optional[str], typer.Option("--by", help="Who acts (default: ERDU_USER, else your login name)")]
Note = Annotated[Optional[str], typer.Option(help="What you did or why; kept on the incident's timeline")]


def _person(name: str, incident_id: str, by: str | None, note: str | None) -> None:
    from erdu_tasks.tasks.people import ActionRefused, act

    if by is not None and not by.strip():
        fail("--by needs a name")
    rt = runtime()
    incident_id = incident_id_of(rt, incident_id)
    try:
        done = act(rt, name, incident_id, (by or who()).strip(), note)
    except ActionRefused as exc:
        fail(str(exc), 1)
    console.print(shown(done.message), highlight=False)


@incidents_app.command("ack")
def incidents_ack(incident_id: str, by: By = None, note: Note = None) -> None:
    """Acknowledge an incident (stops its escalation)."""
    _person("ack", incident_id, by, note)


@incidents_app.command("resolve")
def incidents_resolve(incident_id: str, by: By = None,
                      note: Annotated[Optional[str], typer.Option(help="What you did / the cause")] = None) -> None:
    """Resolve an incident by hand; the report is still written and ERDU learns from it."""
    _person("resolve", incident_id, by, note)


@incidents_app.command("approve")
def incidents_approve(incident_id: str, by: By = None, note: Note = None) -> None:
    """Approve a fix parked in awaiting_approval."""
    _person("approve", incident_id, by, note)


@incidents_app.command("retry")
def incidents_retry(incident_id: str, by: By = None, note: Note = None) -> None:
    """Re-drive an escalated incident from the stage that failed."""
    _person("retry", incident_id, by, note)


@incidents_app.command("reassign")
def incidents_reassign(incident_id: str,
                       person: Annotated[str, typer.Argument(help="The person (a key of the people section)")],
                       by: By = None) -> None:
    """Assign an open incident to a person and page them now through their contacts."""
    from erdu_tasks.tasks.people import ActionRefused, reassign

    if by is not None and not by.strip():
        fail("--by needs a name")
    rt = runtime()
    incident_id = incident_id_of(rt, incident_id)
    try:
        done = reassign(rt, incident_id, person.strip(), (by or who()).strip())
    except ActionRefused as exc:
        fail(str(exc), 1)
    console.print(shown(done.message), highlight=False)


@failed_app.command("ls")
def failed_ls(all_: Annotated[bool, typer.Option("--all", help="Include retried and dismissed ones")] = False
              ) -> None:
    """Failed stage tasks still waiting for a person: incident, stage, error, time."""
    from erdu_tasks.store import failed

    rt = runtime()
    with rt.db.transaction() as conn:
        rows = conn.execute(
            "SELECT id, task_id, task_name, stage, incident_id, error, worker, failed_at, retried_at"
            " FROM failed_tasks" + ("" if all_ else f" WHERE {failed.OPEN}") + " ORDER BY id DESC LIMIT 200"
        ).fetchall()
    table = Table(title=f"{len(rows)} failed task(s)")
    for col in ("#", "Incident", "Stage", "Task", "Error", "Failed", "Retried"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["id"]), shown(r["incident_id"] or "-"), shown(r["stage"] or "-"), shown(r["task_name"]),
                      shown(r["error"], limit=70),
                      _age(r["failed_at"]), _age(r["retried_at"]) if r["retried_at"] else "")
    console.print(table)


@failed_app.command("show")
def failed_show(failed_id: Annotated[int, typer.Argument(help="The # that `erdu failed ls` shows")]) -> None:
    """One failed task whole: task, incident, worker, the full error, and whether it was retried or dismissed."""
    from erdu_tasks.store import failed

    rt = runtime()
    with rt.db.transaction() as conn:
        row = failed.get(conn, failed_id)
    if row is None:
        fail(f"no failed task #{failed_id}", 1)
    for key in ("task_name", "task_id", "stage", "incident_id", "worker", "failed_at", "retried_at", "dismissed_at",
                "dismissed_by", "dismiss_note"):
        if row[key] is not None:
            console.print(f"{key}: {shown(row[key])}", highlight=False, soft_wrap=True)
    console.print("error:", highlight=False)
    console.print(escape(plain(row["error"], multiline=True)), highlight=False, soft_wrap=True)


@failed_app.command("dismiss")
def failed_dismiss(failed_id: Annotated[int, typer.Argument(help="The # that `erdu failed ls` shows")],
                   by: By = None, note: Note = None) -> None:
    """Dismiss a failed task nobody will retry: it leaves `failed ls` and the open count (who and why kept)."""
    from erdu_tasks.store import failed

    rt = runtime()
    who_ = (by or who()).strip()
    with rt.db.transaction() as conn:
        row = failed.get(conn, failed_id)
        if row is None:
            fail(f"no failed task #{failed_id}", 1)
        done = failed.dismiss(conn, failed_id, who_, note)
    if done is None:
        state = "dismissed" if row["dismissed_at"] else "retried"
        fail(f"failed task #{failed_id} was already {state}", 1)
    console.print(f"failed task #{failed_id} dismissed by {shown(who_)}", highlight=False)


@failed_app.command("retry")
def failed_retry(
    incident_id: Annotated[Optional[str], typer.Argument(help="Incident whose failed stage to re-drive")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Re-drive every incident with an open failure")] = False,
    by: By = None,
) -> None:
    """Re-drive incidents from the stage that failed (idempotent).

    Exit 1 when the incident does not exist or cannot be retried (or, with --all, when any was refused);
    --all with nothing to re-drive says so and exits 0."""
    from erdu_tasks.tasks.people import ActionRefused, retry

    from erdu_tasks.store import failed

    if not incident_id and not all_:
        fail("give an incident id or --all")
    if incident_id and all_:
        fail("give an incident id or --all, not both")
    rt = runtime()
    who_ = (by or who()).strip()
    if not all_:
        try:
            console.print(shown(retry(rt, incident_id_of(rt, incident_id), who_).message), highlight=False)
        except ActionRefused as exc:
            fail(str(exc), 1)
        return
    with rt.db.transaction() as conn:
        ids = [r["incident_id"] for r in conn.execute(
            f"SELECT DISTINCT incident_id FROM failed_tasks WHERE {failed.OPEN} AND incident_id IS NOT NULL"
            " ORDER BY incident_id").fetchall()]
        orphans = conn.execute(f"SELECT count(*) AS n FROM failed_tasks WHERE {failed.OPEN} AND incident_id IS NULL"
                               ).fetchone()["n"]
    if orphans:
        err.print(f"{orphans} open failed task(s) name no incident: nothing to re-drive; see `erdu failed ls`, "
                  "then `erdu failed dismiss N`", highlight=False)
    if not ids:
        console.print("nothing to retry: no open failed task names an incident", highlight=False)
        return
    refused = 0
    for iid in ids:
        try:
            console.print(shown(retry(rt, iid, who_).message), highlight=False)
        except ActionRefused as exc:
            refused += 1
            err.print(f"skipped: {shown(exc)}", highlight=False)
    if refused:
        fail(f"{refused} of {len(ids)} incident(s) could not be retried", 1)


@rules_app.command("ls")
def rules_ls(
    path: Annotated[Optional[str], typer.Argument(help="A user rules file (default: ERDU_RULES_FILE)")] = None,
) -> None:
    """List every built-in and user rule in the order they are tried: file and line, state, effect, match."""
    from pathlib import Path

    from erdu_tasks.ingest.detect.rules import RuleSet

    target = Path(path) if path else load_settings().rules_file
    try:
        rows = RuleSet.listing(target)
    except ConfigError as exc:
        fail(str(exc))
    active = sum(1 for _, state in rows if state == "active")
    table = Table(title=f"{len(rows)} rule(s), {active} active (built-in"
                        + (f" and {target}" if target else " only") + "), in the order they are tried")
    for col in ("Where", "Name", "State", "Does", "Matches"):
        table.add_column(col)
    for rule, state in rows:
        table.add_row(escape(f"{rule.file}:{rule.line or '?'}"), escape(rule.name), state, escape(rule.effect()),
                      escape(rule.summary))
    console.print(table)


@runbooks_app.command("check")
def runbooks_check(
    path: Annotated[Optional[str], typer.Argument(help="A runbook file or directory (default: ERDU_RUNBOOKS_DIR)")] = None,
) -> None:
    """Validate every runbook file; print each problem with file, line, runbook and field."""
    from pathlib import Path

    from erdu_tasks.fixer.runbooks import DEFAULT_RUNBOOKS_DIR, RunbookSet, check_runbooks

    target = Path(path) if path else (load_settings().runbooks_dir or DEFAULT_RUNBOOKS_DIR)
    if not target.exists():
        fail(f"{target} does not exist")
    problems = check_runbooks(target)
    if problems:
        for problem in problems:
            err.print(problem, highlight=False, markup=False)
        fail(f"{len(problems)} problem(s) in {target}", 1)
    count = len(RunbookSet.load(target).runbooks)
    console.print(f"{target}: {count} runbook(s), no problems", highlight=False)


@runbooks_app.command("ls")
def runbooks_ls() -> None:
    """List runbooks: what each matches, what it runs, how it is validated, its limits."""
    from erdu_tasks.fixer.runbooks import RunbookSet

    try:
        runbooks = RunbookSet.load(load_settings().runbooks_dir)
    except ConfigError as exc:
        fail(str(exc))
    table = Table(title=f"{len(runbooks.runbooks)} runbook(s) from {runbooks.path}")
    for col in ("Name", "Matches", "Actions", "Validation", "Approval", "Limit", "Dry run"):
        table.add_column(col)
    for rb in runbooks.runbooks:
        table.add_row(rb.name, escape(rb.match.describe()), ", ".join(step.action for step in rb.actions),
                      rb.validation.check if rb.validation else "-", rb.approval.value,
                      f"{rb.limits.max_runs}/{rb.limits.per_seconds:.0f}s", "yes" if rb.dry_run else "no")
    console.print(table)


@app.command()
def flower(
    port: Annotated[Optional[int], typer.Option(help="Port (default flower.port or 5555)")] = None,
    address: Annotated[Optional[str], typer.Option(help="Address (default flower.address or 127.0.0.1)")] = None,
) -> None:
    """Run the Flower dashboard on ERDU's queues (basic auth from settings.flower: user, password)."""
    from erdu_tasks.devstack.flower import flower_options, run_flower
    from erdu_tasks.store.preflight import check_redis

    settings = load_settings()
    try:
        opts = flower_options(settings.flower or {}, port=port, address=address)
        check_redis(settings.redis_url)
    except (ConfigError, ServiceUnreachable) as exc:
        fail(str(exc))
    raise typer.Exit(run_flower(opts, settings))


@app.command()
def alive(
    kind: Annotated[str, typer.Argument(help="Which process of this machine or container: worker or beat")] = "worker",
    max_age: Annotated[float, typer.Option(help="Seconds the liveness file may be old", min=1)] = 60.0,
) -> None:
    """Liveness probe: exit 0 if the worker (or beat) touched its liveness file within --max-age seconds.

    It asks nothing of Redis or Postgres, so a blip of either restarts no pod (use it for livenessProbe;
    readiness may ping the worker through the broker)."""
    from erdu_tasks.celery_ext.liveness import age_seconds, alive_file

    if kind not in ("worker", "beat"):
        fail(f"unknown process kind {kind!r}: worker or beat", 2)
    path = alive_file(load_settings().state_dir, kind)
    age = age_seconds(path)
    if age is None:
        fail(f"no {kind} has started here: {path} does not exist", 1)
    if age > max_age:
        fail(f"the {kind} is wedged: {path} was last touched {age:.0f} s ago (more than {max_age:g} s)", 1)
    console.print(plain(f"{kind} alive: {path} touched {age:.0f} s ago"), highlight=False, markup=False)


@app.command()
def metrics(
    port: Annotated[int, typer.Option(help="Port to serve /metrics on")] = 9808,
    address: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
) -> None:
    """Serve Prometheus metrics computed from Postgres and Redis on each scrape."""
    from erdu_tasks.store.metrics import serve

    settings = load_settings()
    try:
        serve(settings.database_url, settings.redis_url, port=port, address=address,
              channels=tuple(settings.escalation.channels))
    except OSError as exc:
        fail(f"cannot listen on {address}:{port}: {exc}")


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Keep the demo stack running until Ctrl-C")] = False,
) -> None:
    """A live scenario on a private stack: a flaky service breaks, ERDU detects, restarts and reports it."""
    from erdu_tasks.devstack.demo import run_demo

    try:
        code = run_demo(console, keep=keep)
    except (ServiceUnreachable, ErduError) as exc:
        fail(str(exc))
    raise typer.Exit(code)


@app.command()
def stats(
    since: Annotated[Optional[str], typer.Option(help="Only incidents detected within this long, e.g. 24h, 7d")] = None,
    limit: Annotated[int, typer.Option(help="How many fingerprints, most incidents first")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of tables")] = False,
) -> None:
    """MTTA and MTTR per severity and per fingerprint, with resolved, escalated and auto-resolved counts."""
    from erdu_tasks.store import stats as incident_stats
    from erdu_tasks.settings.common import parse_duration
    from erdu_tasks.durations import human_duration as _dur

    start = None
    if since:
        try:
            start = datetime.now(timezone.utc) - parse_duration(since)
        except ValueError as exc:
            fail(f"--since {since!r}: {exc}")
    rt = runtime()
    with rt.db.transaction() as conn:
        total = incident_stats.overall(conn, since=start)
        severities = incident_stats.by_severity(conn, since=start)
        patterns = incident_stats.by_fingerprint(conn, since=start, limit=limit)
    if as_json:
        print(json.dumps({"since": start.isoformat() if start else None, "overall": total.as_dict(),
                          "by_severity": [r.as_dict() for r in severities],
                          "by_fingerprint": [r.as_dict() for r in patterns]}, indent=2))
        return
    columns = ("Incidents", "Open", "Resolved", "Escalated", "Auto", "MTTA (n)", "MTTR")

    def cells(r) -> list[str]:
        return [str(r.incidents), str(r.open), str(r.resolved), str(r.escalated), str(r.auto_resolved),
                f"{_dur(r.mtta)} ({r.acknowledged})", _dur(r.mttr)]

    table = Table(title="by severity" + (f" (since {start:%Y-%m-%d %H:%M} UTC)" if start else ""))
    for col in ("Severity", *columns):
        table.add_column(col)
    for r in [*severities, total]:
        table.add_row(r.key, *cells(r))
    console.print(table)
    table = Table(title="by fingerprint")
    for col in ("Fingerprint", "Title", *columns, "Best runbook"):
        table.add_column(col)
    for r in patterns:
        best = f"{shown(r.best_runbook)} {r.runbook_successes}/{r.runbook_attempts}" if r.best_runbook else "-"
        table.add_row(shown(r.key[:16]), shown(r.title or "", limit=40), *cells(r), best)
    console.print(table)


@app.command()
def prune(
    older_than: Annotated[Optional[str], typer.Option(
        help="Prune closed incidents closed longer ago than this (e.g. 30d); default: retention.incidents")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only count what would go")] = False,
    no_archive: Annotated[bool, typer.Option("--no-archive", help="Delete without writing the archive file")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Apply the retention policy now: archive closed incidents past it to a .jsonl.gz file, then delete them.

    Only closed incidents go; open, escalated and acknowledged ones stay whatever their age. Learned
    patterns and the totals behind /metrics and `erdu stats` are kept. Beat runs the same every
    retention.interval.
    """
    from erdu_tasks.settings.common import parse_duration
    from erdu_tasks.tasks.retention import run_prune

    keep = None
    if older_than is not None:
        try:
            keep = parse_duration(older_than)
        except ValueError as exc:
            fail(f"--older-than {older_than!r}: {exc}")
        if keep.total_seconds() < 3600:
            fail(f"--older-than {older_than!r}: at least 1h, so nothing just closed is pruned")
    rt = runtime()
    if keep is None and rt.settings.retention.incidents is None:
        if not as_json:
            console.print("retention.incidents is off: no incident is pruned (give --older-than to prune anyway)")
    result = run_prune(rt, older_than=keep, dry_run=dry_run, archive=not no_archive, by=f"person:{who()}")
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
        return
    verb = "would prune" if dry_run else "pruned"
    cutoff = f"closed before {result.cutoff:%Y-%m-%d %H:%M} UTC" if result.cutoff else "none (retention off)"
    console.print(f"{verb} {result.incidents} incident(s) ({result.timeline} timeline rows), {cutoff}")
    if not dry_run:
        console.print(f"forgot {result.receipts} ingest receipt(s) and {result.rejected} rejected event(s)")
        for path in result.archives:
            console.print(f"archive: {path}", highlight=False)


def main() -> None:
    """Entry point of the `erdu` script."""
    try:
        app()
    except ServiceUnreachable as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)
    except ConfigError as exc:
        err.print(f"[bold red]configuration error:[/] {exc}", highlight=False)
        sys.exit(2)
    finally:
        close_runtime()


if __name__ == "__main__":
    main()
