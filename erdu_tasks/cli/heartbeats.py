"""`erdu heartbeat NAME` pings a heartbeat; `erdu heartbeats ls` lists them with their last ping and state."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Annotated

import typer
from rich.table import Table

from erdu_tasks.cli import common

heartbeats_app = typer.Typer(help="Heartbeats (dead-man switches): late ones become incidents, their return "
                                  "resolves them.", no_args_is_help=True)


def heartbeat(name: Annotated[str, typer.Argument(help="The heartbeat's name (letters, digits, '_', '-', '.')")]
              ) -> None:
    """Ping a heartbeat, e.g. at the end of a cron job: `backup.sh && erdu heartbeat nightly-backup`."""
    from erdu_tasks.monitors import heartbeats
    from erdu_tasks.tasks.heartbeats import ping

    try:
        heartbeats.check_name(name)
    except heartbeats.BadHeartbeatName as exc:
        common.fail(str(exc))
    rt = common.runtime()
    try:
        result = ping(rt, name, source=f"cli:{common.who()}")
    except heartbeats.UnknownHeartbeat as exc:
        common.fail(str(exc), 1)
    beat = result.heartbeat
    line = f"{beat.name}: up, next ping due by {beat.due_at.isoformat(timespec='seconds')}"
    if result.created:
        line += " (created with the defaults)"
    if result.resolved:
        line += f"; resolved {result.resolved}"
    common.console.print(common.shown(line), highlight=False)


@heartbeats_app.command("ls")
def heartbeats_ls(as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False
                  ) -> None:
    """Every heartbeat: state (new, up, late), last ping, when the next one is due, its open incident."""
    from erdu_tasks.monitors import heartbeats

    rt = common.runtime()
    now = datetime.now(timezone.utc)
    with rt.db.transaction() as conn:
        found = heartbeats.list_heartbeats(conn)
    if as_json:
        for beat in found:
            print(json.dumps(beat.as_dict(now)))
        return
    table = Table(title=f"{len(found)} heartbeat(s)")
    for col in ("Name", "State", "Last seen", "Due by", "Period", "Grace", "Incident"):
        table.add_column(col)
    for beat in found:
        seen = beat.last_seen.isoformat(timespec="seconds") if beat.last_seen else "never"
        table.add_row(common.shown(beat.name), beat.state_at(now), seen, beat.due_at.isoformat(timespec="seconds"),
                      f"{beat.period.total_seconds():.0f} s", f"{beat.grace.total_seconds():.0f} s",
                      beat.incident_id or "-")
    common.console.print(table)
