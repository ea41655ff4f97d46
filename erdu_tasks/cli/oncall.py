"""`erdu oncall now|next|show`: who is on call on each schedule of the `oncall` section, and when that changes."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Annotated, Optional

import typer
from rich.table import Table

from erdu_tasks.cli import common

oncall_app = typer.Typer(help="On-call schedules: who is on call now, the next handoff, the coming shifts.",
                         no_args_is_help=True)

At = Annotated[Optional[str], typer.Option(
    "--at", help="Ask about this moment instead of now: ISO 8601, e.g. 2026-03-29T09:30 (in the schedule's "
                 "time zone) or 2026-03-29T07:30Z")]
AsJson = Annotated[bool, typer.Option("--json", help="JSON instead of text")]


def _rota():
    from erdu_tasks.escalation.schedules import Rota

    settings = common.load_settings()
    return Rota(settings.oncall, settings.people)


def _moment(at: str | None, zone) -> datetime:
    if at is None:
        return datetime.now(timezone.utc)
    try:
        moment = datetime.fromisoformat(at.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        common.fail(f"--at {at!r} is not an ISO 8601 time (e.g. 2026-03-29T09:30 or 2026-03-29T07:30+00:00)")
    if moment.tzinfo is None:
        from erdu_tasks.escalation.oncall import local_instant

        return local_instant(moment, zone)
    return moment.astimezone(timezone.utc)


def _schedule(rota, name: str):
    from erdu_tasks.escalation.schedules import UnknownSchedule

    try:
        return rota.schedule(name)
    except UnknownSchedule as exc:
        common.fail(str(exc), 1)


def _local(moment: datetime | None, zone) -> str:
    return moment.astimezone(zone).isoformat(timespec="minutes") if moment else "-"


def _ask(what, *args):
    from erdu_tasks.escalation.schedules import CalendarUnreadable

    try:
        return what(*args)
    except CalendarUnreadable as exc:
        common.fail(str(exc), 1)


@oncall_app.command("now")
def oncall_now(schedule: Annotated[Optional[str], typer.Argument(help="A schedule (default: every one)")] = None,
               at: At = None, as_json: AsJson = False) -> None:
    """Who is on call now (or --at a moment) on one schedule or on every one."""
    rota = _rota()
    names = [schedule] if schedule is not None else rota.names
    if not names:
        common.fail("no schedules are defined (add them under oncall.schedules)", 1)
    for name in names:
        config = _schedule(rota, name)
        current = _ask(rota.now, name, _moment(at, config.zone))
        if as_json:
            print(json.dumps(current.as_dict()))
            continue
        who = current.person or "nobody"
        since = f", since {_local(current.since, config.zone)}" if current.since else ""
        source = f" ({current.source}{since})" if current.source else ""
        common.console.print(common.shown(f"{name}: {who}{source}"), highlight=False)


@oncall_app.command("next")
def oncall_next(schedule: Annotated[str, typer.Argument(help="The schedule")], at: At = None,
                as_json: AsJson = False) -> None:
    """The next handoff after now (or --at a moment): when, from whom, to whom."""
    rota = _rota()
    config = _schedule(rota, schedule)
    change = _ask(rota.next, schedule, _moment(at, config.zone))
    if as_json:
        print(json.dumps(change.as_dict() if change else None))
        return
    if change is None:
        common.console.print(common.shown(f"{schedule}: no handoff in the next 400 days"), highlight=False)
        return
    common.console.print(common.shown(
        f"{schedule}: {change.from_person or 'nobody'} -> {change.to_person or 'nobody'} at "
        f"{_local(change.at, config.zone)} ({change.at.astimezone(timezone.utc).isoformat(timespec='minutes')})"),
        highlight=False)


@oncall_app.command("show")
def oncall_show(schedule: Annotated[str, typer.Argument(help="The schedule")], at: At = None,
                count: Annotated[int, typer.Option(min=1, max=100, help="How many shifts")] = 8,
                as_json: AsJson = False) -> None:
    """The shift in force and the next ones, with what decides each (layer, calendar, override)."""
    rota = _rota()
    config = _schedule(rota, schedule)
    moment = _moment(at, config.zone)
    shifts = _ask(rota.shifts, schedule, moment, count)
    unmatched: list[str] = []
    if config.calendar is not None:
        unmatched = _ask(rota.events, schedule, moment, moment + timedelta(days=120))[1]
    if as_json:
        print(json.dumps({"schedule": schedule, "time_zone": config.time_zone,
                          "shifts": [s.as_dict() for s in shifts], "unmatched_events": unmatched}))
        return
    table = Table(title=f"{schedule} ({config.time_zone})" + (f": {config.description}" if config.description else ""))
    for col in ("From", "Until", "On call", "Decided by"):
        table.add_column(col)
    for shift in shifts:
        table.add_row(_local(shift.start, config.zone), _local(shift.end, config.zone),
                      common.shown(shift.person or "nobody"), common.shown(shift.source or "-"))
    common.console.print(table)
    for summary in unmatched:
        common.err.print(common.shown(f"warning: calendar event {summary!r} names nobody in the people section"),
                         highlight=False)
