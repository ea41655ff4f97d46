"""`erdu grouping merge|split|ls|rm` and `erdu incidents why`: teach the grouper, and ask it why."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from erdu_tasks.cli import common

grouping_app = typer.Typer(help="Teach the grouper: merge two fingerprints into one, split one by a value that "
                                "matters. Applied to new events at once, in every ingest process.",
                           no_args_is_help=True)

By = Annotated[Optional[str], typer.Option("--by", help="Who teaches (default: ERDU_USER, else your login name)")]
Note = Annotated[Optional[str], typer.Option(help="Why; kept with the override")]


def _fingerprint_or_incident(rt, ref: str) -> str:
    """An incident id (or prefix) becomes its full id; a fingerprint stays as it is."""
    from erdu_tasks.ingest.grouping import FINGERPRINT_RE

    return ref if FINGERPRINT_RE.match(ref.strip()) else common.incident_id_of(rt, ref)


def _teach(do) -> None:
    from erdu_tasks.ingest.grouping import GroupingRefused

    rt = common.runtime()
    try:
        with rt.db.transaction() as conn:
            said = do(rt, conn)
    except GroupingRefused as exc:
        common.fail(str(exc), 1)
    common.console.print(common.shown(said), highlight=False)


@grouping_app.command("merge")
def grouping_merge(
    source: Annotated[str, typer.Argument(help="The fingerprint (or an incident of it) that is really TARGET")],
    target: Annotated[str, typer.Argument(help="The fingerprint (or an incident of it) it is")],
    by: By = None, note: Note = None,
) -> None:
    """SOURCE is TARGET: SOURCE's new events go to TARGET, and what was learned about SOURCE follows."""
    from erdu_tasks.ingest import grouping

    _teach(lambda rt, conn: grouping.merge(conn, _fingerprint_or_incident(rt, source),
                                           _fingerprint_or_incident(rt, target), by or common.who(), note))


@grouping_app.command("split")
def grouping_split(
    fingerprint: Annotated[str, typer.Argument(help="The fingerprint (or an incident of it) to split")],
    slot: Annotated[int, typer.Argument(help="Which <*> of its template matters (1 = the first; see "
                                             "`erdu incidents why`)")],
    by: By = None, note: Note = None,
) -> None:
    """The value at <*> number SLOT matters: each value gets its own key from now on."""
    from erdu_tasks.ingest import grouping

    _teach(lambda rt, conn: grouping.split(conn, _fingerprint_or_incident(rt, fingerprint), slot,
                                           by or common.who(), note))


@grouping_app.command("rm")
def grouping_rm(override_id: Annotated[int, typer.Argument(help="The override's id (`erdu grouping ls`)")]) -> None:
    """Remove an override: new events are grouped as before it."""
    from erdu_tasks.ingest import grouping

    _teach(lambda rt, conn: grouping.remove(conn, override_id))


@grouping_app.command("ls")
def grouping_ls(as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False) -> None:
    """The merges and splits in force, oldest first."""
    from erdu_tasks.ingest import grouping

    rt = common.runtime()
    with rt.db.transaction() as conn:
        rows = grouping.listing(conn)
    if as_json:
        for r in rows:
            print(json.dumps(r, default=str))
        return
    table = Table(title="grouping overrides")
    for col in ("Id", "Kind", "Fingerprint", "Becomes / slot", "By", "When", "Note"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["id"]), r["kind"], r["fingerprint"], r["target"] or f"<*> {r['slot']}",
                      common.shown(r["created_by"]), f"{r['created_at']:%Y-%m-%d %H:%M}", common.shown(r["note"] or ""))
    common.console.print(table)


def incidents_why(
    incident_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="The explanation as JSON")] = False,
) -> None:
    """Why the incident has its key: the step that made the template, the values masked and by which rule."""
    from erdu_tasks.ingest import grouping

    rt = common.runtime()
    incident_id = common.incident_id_of(rt, incident_id)
    with rt.db.transaction() as conn:
        found = grouping.why(conn, incident_id)
    if found is None:
        common.fail(f"no incident {incident_id}", 1)
    if as_json:
        print(json.dumps(found, default=str, indent=2))
        return
    out = common.console.print
    out(f"[bold]{common.shown(found['incident_id'])}[/]  fingerprint {common.shown(found['fingerprint'])}  "
        f"grouping version {found['version']}", highlight=False)
    out(f"step: {common.shown(found['step'])}", highlight=False)
    if found.get("dedup_key"):
        out(f"dedup_key: {common.shown(found['dedup_key'])}", highlight=False)
    out(f"template: {common.shown(found['template'], limit=2000)}", highlight=False)
    if found.get("recomputed"):
        out(f"note: {common.shown(found['recomputed'])}", highlight=False)
    if found.get("masked"):
        table = Table(title=f"masked values ({found['masked_total']})")
        for col in ("<*>", "Text", "Rules"):
            table.add_column(col)
        for n, m in enumerate(found["masked"], start=1):
            table.add_row(str(n), common.shown(m["text"], limit=120), ", ".join(m["rules"]))
        out(table)
    for step in found.get("steps", []):
        out(f"then: {common.shown(step)}", highlight=False)
    for o in found.get("overrides_now", []):
        what = f"merged into {o['target']}" if o["kind"] == "merge" else f"split on <*> {o['slot']}"
        out(f"override {o['id']}: {o['fingerprint']} {what} by {common.shown(o['created_by'])}", highlight=False)
