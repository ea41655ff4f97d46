"""erdu.prune (beat, and `erdu prune`): the retention policy — archive and delete closed incidents past it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from erdu_tasks import names
from erdu_tasks.app import app, runtime
from erdu_tasks.runtime import Runtime, worker_name
from erdu_tasks.store import retention as store
from erdu_tasks.tasks.base import ErduTask, log


def archive_dir(rt: Runtime) -> Path:
    return rt.settings.retention.archive_dir or (rt.settings.state_dir / "archive")


def _report_of(row: dict) -> str | None:
    path = row.get("report_path")
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def run_prune(rt: Runtime, *, older_than: timedelta | None = None, dry_run: bool = False, by: str = "beat",
              archive: bool = True, max_batches: int | None = None) -> store.PruneResult:
    """Prune what the retention policy (or `older_than`) says is due, batch by batch, each its own transaction."""
    policy = rt.settings.retention
    keep = older_than if older_than is not None else policy.incidents
    cutoff = datetime.now(timezone.utc) - keep if keep is not None else None
    result = store.PruneResult(cutoff=cutoff, dry_run=dry_run)
    if dry_run:
        if cutoff is not None:
            with rt.db.transaction() as conn:
                result.incidents, result.timeline = store.count_due(conn, cutoff)
        return result
    if cutoff is not None:
        writer = store.ArchiveFile(archive_dir(rt)) if archive else None
        batches = 0
        while max_batches is None or batches < max_batches:
            with rt.db.transaction() as conn:
                n, timeline = store.prune_batch(conn, cutoff, batch=policy.batch, archive=writer,
                                                read_report=_report_of)
            batches += 1
            result.incidents += n
            result.timeline += timeline
            if n < policy.batch:
                break
        if writer is not None and writer.written:
            result.archives.append(str(writer.path))
    with rt.db.transaction() as conn:
        result.receipts, result.rejected = store.prune_small_tables(
            conn, older_than_seconds=policy.receipts.total_seconds())
        store.record_run(conn, result, by)
    return result


@app.task(name=names.PRUNE, base=ErduTask, bind=True)
def prune(self: ErduTask) -> dict:
    """One retention pass (beat)."""
    rt = runtime()
    result = self.with_retries(lambda: run_prune(rt, by=worker_name(self.request.hostname)))
    if result.incidents or result.receipts or result.rejected:
        log.info("pruned", **{k: v for k, v in result.as_dict().items() if k != "dry_run"})
    return result.as_dict()
