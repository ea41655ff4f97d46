"""`erdu silence add|ls|expire`: silences and maintenance windows from the command line."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Annotated, Optional

import typer
from rich.table import Table

from erdu_tasks.cli import common

silence_app = typer.Typer(help="Silences and maintenance windows: matching incidents are recorded and counted, "
                               "but notify nobody and run no fix until the silence ends.", no_args_is_help=True)



@silence_app.command("add")
def silence_add(
    matchers: Annotated[list[str], typer.Argument(
        help="name=value, name!=value, name=~regex or name!~regex; names: service, fingerprint, severity, tag, "
             "label.KEY. All must match.")],
    comment: Annotated[str, typer.Option("--comment", "-c", help="Why (shown on every silenced incident)")],
    duration: Annotated[str, typer.Option(help="How long, e.g. 30m, 2h (ignored with --ends)")] = "1h",
    starts: Annotated[str, typer.Option(help="When it starts: now, a delay (30m) or an ISO time; "
                                             "a later start makes a maintenance window")] = "now",
    ends: Annotated[Optional[str], typer.Option(help="When it ends: a delay from now or an ISO time")] = None,
    author: Annotated[Optional[str], typer.Option(help="Who adds it (default: ERDU_USER or USER)")] = None,
    during: Annotated[Optional[list[str]], typer.Option(
        "--during", help="Recurring: silence only while this time interval (escalation.time_intervals) "
                         "matches; repeat for several")] = None,
) -> None:
    """Add a silence (or a maintenance window, with a later --starts)."""
    from erdu_tasks.escalation import silences
    from erdu_tasks.settings.common import parse_duration

    now = datetime.now(timezone.utc)
    try:
        parsed = silences.parse_matchers(matchers)
        begin = silences.parse_when(starts, now)
        if ends is not None:
            end = silences.parse_when(ends, now)
        else:
            try:
                end = begin + parse_duration(duration)
            except ValueError as exc:
                raise silences.SilenceError(f"--duration: {exc}") from None
    except silences.SilenceError as exc:
        common.fail(str(exc))
    rt = common.runtime()
    config = rt.settings.escalation
    try:
        with rt.db.transaction() as conn:
            silence = silences.add_silence(conn, parsed, starts_at=begin, ends_at=end, author=author or common.who(),
                                           comment=comment, now=now, active_during=during or (),
                                           intervals=config.time_intervals,
                                           max_duration=config.silences.max_duration)
    except silences.SilenceError as exc:
        common.fail(str(exc))
    state = silence.state(now, config.time_intervals).value
    common.console.print(f"{silence.id} ({state}) {silence.describe()} from {begin.isoformat(timespec='seconds')} "
                      f"until {end.isoformat(timespec='seconds')}", highlight=False)


@silence_app.command("ls")
def silence_ls(
    all_: Annotated[bool, typer.Option("--all", help="Include expired silences")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """Silences with their state and how many incidents (and occurrences) each holds now."""
    from erdu_tasks.escalation import silences
    rt = common.runtime()
    intervals = rt.settings.escalation.time_intervals
    now = datetime.now(timezone.utc)
    with rt.db.transaction() as conn:
        rows = silences.list_silences(conn, now=now, include_expired=all_)
        counts = silences.held_counts(conn, [s.id for s in rows])
    if as_json:
        for s in rows:
            held, occurrences = counts.get(s.id, (0, 0))
            print(json.dumps({"id": s.id, "state": s.state(now, intervals).value,
                              "matchers": [m.to_dict() for m in s.matchers], "active_during": list(s.active_during),
                              "starts_at": s.starts_at.isoformat(), "ends_at": s.ends_at.isoformat(),
                              "expired_at": s.expired_at.isoformat() if s.expired_at else None,
                              "author": s.author, "comment": s.comment, "held_incidents": held,
                              "held_occurrences": occurrences}))
        return
    table = Table(title=f"{len(rows)} silence(s)")
    for col in ("ID", "State", "Matchers", "Starts", "Ends", "Author", "Held", "Comment"):
        table.add_column(col)
    for s in rows:
        held, occurrences = counts.get(s.id, (0, 0))
        table.add_row(s.id, s.state(now, intervals).value, s.describe(), s.starts_at.isoformat(timespec="seconds"),
                      s.end().isoformat(timespec="seconds"), s.author, f"{held} ({occurrences} seen)",
                      s.comment[:60])
    common.console.print(table)


@silence_app.command("expire")
def silence_expire(silence_id: str) -> None:
    """End a silence now; the incidents it held resume on the next escalation sweep."""
    from erdu_tasks.escalation import silences
    rt = common.runtime()
    now = datetime.now(timezone.utc)
    try:
        with rt.db.transaction() as conn:
            silence = silences.expire_silence(conn, silence_id, who=common.who(), now=now)
    except silences.SilenceError as exc:
        common.fail(str(exc), 1)
    common.console.print(f"{silence.id} expired; held incidents resume shortly", highlight=False)
