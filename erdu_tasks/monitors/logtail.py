"""The log tailer: each watched file is read from its stored position, exactly once.

Per file, under a Redis lock (two monitor workers never scan one file at once):

1. If the path now names another file (rotation: rename + new file; or replacement), the old
   file is remembered as `rotated` and read first, found by its (dev, inode) in the same
   directory, and kept being read for `rotate_wait` seconds (a writer may still append to it
   through its open handle); then the new file is read from its start.
2. If the file is shorter than the position, or its first bytes changed, it was truncated or
   replaced in place: it is read again from its start.
3. Complete events are turned into Event objects (error-level lines, or lines a classification
   rule gives a severity), folded by fingerprint and upserted in the SAME transaction that
   moves the offset, with a compare-and-set on the row's version. A crash before the commit
   leaves the offset where it was; a crash after it has nothing left to do. New incidents are
   handed to the pipeline after the commit (the reconciler covers a hand-off lost to a crash).

Files present at a watch's first scan start at their end (unless `from_start`); files that
appear later, and new files after a rotation, start at 0.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, BinaryIO

import psycopg
import redis
import structlog
from psycopg.types.json import Jsonb

from erdu_tasks.files import UnsafeFile, inside, open_regular, root_of
from erdu_tasks.fixer.checks import compile_pattern
from erdu_tasks.store.db import Database
from erdu_tasks.ingest.accept import IngestRuntime
from erdu_tasks.ingest.detect.rules import RuleSet
from erdu_tasks.errors import TransientError
from erdu_tasks.model import Event
from erdu_tasks.names import TAIL_LOCK_PREFIX
from erdu_tasks.monitors import state
from erdu_tasks.monitors.config import LogFile, LogsConfig
from erdu_tasks.monitors.logread import (
    HEAD_BYTES,
    TRUNCATED_MARK,
    FileId,
    ReadResult,
    head_hash,
    line_start_before,
    read_events,
)

log = structlog.get_logger("erdu.monitors.logs")


@dataclass(frozen=True)
class Rotated:
    """The file a path named before a rotation, still being read for a while."""

    dev: int
    ino: int
    offset: int
    head_len: int
    head_hash: str
    skipping: bool
    until: float

    def as_json(self) -> dict[str, Any]:
        """For the `rotated` jsonb column."""
        return {"dev": self.dev, "ino": self.ino, "offset": self.offset, "head_len": self.head_len,
                "head_hash": self.head_hash, "skipping": self.skipping, "until": self.until}


@dataclass(frozen=True)
class Position:
    """Where the tailer is in one watched path."""

    path: str
    watch: str
    file: FileId | None = None
    offset: int = 0
    head_len: int = 0
    head_hash: str = ""
    skipping: bool = False
    held_since: datetime | None = None
    rotated: Rotated | None = None
    version: int = 0
    stored: bool = False


@dataclass
class TailDeps:
    """What the tailer needs from outside: storage, locks, the ingest runtime, and the hand-off of new incidents."""

    db: Database
    redis: redis.Redis
    rt: IngestRuntime   # rules, catalog and settings, as the one ingest entry takes them
    notify: Callable[[str], None]
    host: str
    clock: Callable[[], float] = time.time


@dataclass
class FileStats:
    """What one scan did to one file."""

    path: str
    lines: int = 0
    events: int = 0
    new_incidents: int = 0
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None


class _Conflict(Exception):
    """Another scanner moved the position first (or took the file's lock): this one stops."""


@dataclass
class _Budget:
    """The scan's time budget, and the file's lock kept alive between commits."""

    deadline: float
    lock: Any = None

    def keepalive(self) -> None:
        """Push the lock's expiry back; _Conflict if it expired and another worker took it."""
        if self.lock is None:
            return
        try:
            self.lock.reacquire()
        except redis.exceptions.LockError:
            raise _Conflict("lost the file's lock") from None
        except redis.RedisError as exc:
            raise TransientError(f"redis unavailable for the tail lock: {exc}") from exc

    def over(self) -> bool:
        """True when the scan should stop reading (time is up); otherwise keeps the lock alive."""
        if time.monotonic() > self.deadline:
            return True
        self.keepalive()
        return False


_registered: set[tuple[str, str]] = set()
_unreadable: set[str] = set()
UNREADABLE = "cannot read: "
BUSY = "another monitor worker is reading it"


def scan(config: LogsConfig, deps: TailDeps, only: set[str] | None = None) -> list[FileStats]:
    """One pass over every watched file (or those of them in `only`); returns what it did per file."""
    deadline = time.monotonic() + config.run_seconds
    results: list[FileStats] = []
    for watch in config.files:
        for path in sorted(_paths(watch, deps)):
            if only is not None and path not in only:
                continue
            if time.monotonic() > deadline:
                results.append(FileStats(path, skipped="time budget of this scan used up"))
                continue
            stats = _locked(path, watch, config, deps, deadline)
            failing = bool(stats.skipped and stats.skipped.startswith(UNREADABLE))
            if failing or path in _unreadable:
                _report_unreadable(path, watch, deps, stats.skipped if failing else None)
            results.append(stats)
    return results


def _report_unreadable(path: str, watch: LogFile, deps: TailDeps, problem: str | None) -> None:
    """A watched file that cannot be read is an incident (once), and its recovery is on the timeline."""
    key = f"logtail:{path}"
    event = Event(source="monitor", message=f"Watched log file cannot be read: {path}", service=watch.service,
                  host=deps.host, dedup_key=f"logtail:unreadable:{path}"[:255], labels={"path": path[:1024]})
    obs = state.Observation(key=key, failing=problem is not None, detail=problem or f"{path} is readable again",
                            event=event, repeat=False, data={"path": path})
    state.observe(deps.db, [obs], deps.rt, deps.notify, _now(deps))
    if problem is None:
        _unreadable.discard(path)
    else:
        _unreadable.add(path)


def _locked(path: str, watch: LogFile, config: LogsConfig, deps: TailDeps, deadline: float) -> FileStats:
    key = TAIL_LOCK_PREFIX + hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()
    try:
        lock = deps.redis.lock(key, timeout=config.lock_timeout, blocking=False)
        if not lock.acquire(blocking=False):
            return FileStats(path, skipped=BUSY)
    except redis.RedisError as exc:
        raise TransientError(f"redis unavailable for the tail lock: {exc}") from exc
    try:
        return tail_file(path, watch, config, deps, _Budget(deadline, lock))
    finally:
        try:
            lock.release()
        except redis.RedisError:  # expired (a very slow scan) or Redis gone: the CAS still protects
            pass


# --- which files -----------------------------------------------------------------------------


def _matches(watch: LogFile) -> list[str]:
    if not watch.is_glob:
        return [watch.path] if os.path.isfile(watch.path) else []
    found = []
    root = root_of(watch.path)
    for p in glob.glob(watch.path):
        name = os.path.basename(p)
        if any(fnmatch.fnmatch(name, pat) for pat in watch.exclude) or not os.path.isfile(p):
            continue
        if not inside(p, root):   # a symlink in the watched directory that leads out of it
            log.warning("log file leads outside its watched directory; not read", path=p, root=root)
            continue
        found.append(os.path.abspath(p))
    return found


def _paths(watch: LogFile, deps: TailDeps) -> set[str]:
    """Files matching the watch now, plus files it tailed before (they may have been rotated away)."""
    matches = _matches(watch)
    marker = (deps.db.url, watch.path)
    if marker in _registered and not watch.is_glob:
        return {watch.path}
    with deps.db.transaction() as conn:
        if marker not in _registered:
            _register(conn, watch, matches)
        stored = [r["path"] for r in conn.execute(
            "SELECT path FROM tail_positions WHERE watch = %s", (watch.path,)).fetchall()] if watch.is_glob else []
    _registered.add(marker)
    if not watch.is_glob:
        return {watch.path}
    return set(matches) | set(stored)


def _register(conn: psycopg.Connection, watch: LogFile, matches: list[str]) -> None:
    """On a watch's very first scan, files already there start at their end (unless from_start)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("erdu-tail-watch:" + watch.path,))
    first = conn.execute("INSERT INTO tail_watches (pattern) VALUES (%s) ON CONFLICT DO NOTHING RETURNING pattern",
                         (watch.path,)).fetchone()
    if not first or watch.from_start:
        return
    for path in matches:
        try:
            with open_regular(path, within=root_of(watch.path)) as handle:
                st = os.fstat(handle.fileno())
                offset, skipping = line_start_before(handle, st.st_size)
                head_len = min(offset, HEAD_BYTES)
                digest = head_hash(handle, head_len)
        except OSError as exc:
            log.warning("cannot open log file at its first scan", path=path, error=str(exc))
            continue
        conn.execute(
            "INSERT INTO tail_positions (path, watch, dev, ino, byte_offset, head_len, head_hash, skipping)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (path) DO NOTHING",
            (path, watch.path, st.st_dev, st.st_ino, offset, head_len, digest, skipping))


# --- positions -------------------------------------------------------------------------------


def load_position(conn: psycopg.Connection, path: str, watch: str) -> Position:
    """The stored position of a path, or a fresh one (not stored yet)."""
    row = conn.execute("SELECT * FROM tail_positions WHERE path = %s", (path,)).fetchone()
    if row is None:
        return Position(path, watch)
    rot = row["rotated"]
    return Position(
        path=path, watch=row["watch"],
        file=FileId(int(row["dev"]), int(row["ino"])) if row["dev"] is not None else None,
        offset=row["byte_offset"], head_len=row["head_len"], head_hash=row["head_hash"], skipping=row["skipping"],
        held_since=row["held_since"], rotated=Rotated(**rot) if rot else None, version=row["version"], stored=True)


def _save(conn: psycopg.Connection, old: Position, new: Position, *, lines: int, events: int) -> None:
    values = {
        "path": new.path, "watch": new.watch, "dev": new.file.dev if new.file else None,
        "ino": new.file.ino if new.file else None, "offset": new.offset, "head_len": new.head_len,
        "head_hash": new.head_hash, "skipping": new.skipping, "held_since": new.held_since,
        "rotated": Jsonb(new.rotated.as_json()) if new.rotated else None, "version": old.version + 1,
        "lines": lines, "events": events, "old_version": old.version,
    }
    if old.stored:
        cur = conn.execute(
            """
            UPDATE tail_positions SET dev = %(dev)s, ino = %(ino)s, byte_offset = %(offset)s,
                   head_len = %(head_len)s, head_hash = %(head_hash)s, skipping = %(skipping)s,
                   held_since = %(held_since)s, rotated = %(rotated)s, version = %(version)s,
                   lines = lines + %(lines)s, events = events + %(events)s, updated_at = now()
            WHERE path = %(path)s AND version = %(old_version)s
            """, values)
    else:
        cur = conn.execute(
            """
            INSERT INTO tail_positions (path, watch, dev, ino, byte_offset, head_len, head_hash, skipping,
                                        held_since, rotated, version, lines, events)
            VALUES (%(path)s, %(watch)s, %(dev)s, %(ino)s, %(offset)s, %(head_len)s, %(head_hash)s, %(skipping)s,
                    %(held_since)s, %(rotated)s, %(version)s, %(lines)s, %(events)s)
            ON CONFLICT (path) DO NOTHING
            """, values)
    if cur.rowcount != 1:
        raise _Conflict(new.path)


# --- events ----------------------------------------------------------------------------------


def is_event(text: str, watch: LogFile, rules: RuleSet, event: Callable[[], Event]) -> bool:
    """Error-level text, or (unless the line says it is below warning) text a rule gives a severity."""
    if compile_pattern(watch.error_pattern).search(text):
        return True
    if compile_pattern(watch.quiet_pattern).search(text.split("\n", 1)[0]):
        return False
    candidate = event()
    return any(r.severity is not None and r.ignore is not True and r.test(candidate) is not None for r in rules.rules)


def to_events(texts: list[str], watch: LogFile, path: str, deps: TailDeps) -> list[Event]:
    """The events among the folded texts, with service, host and the watched path."""
    out = []
    labels = {"path": path[:1024]}
    for text in texts:
        if not text.strip():
            continue
        # A cut line is marked in its text and, since stored descriptions are shorter than a
        # line may be, in a label as well.
        marked = {**labels, "truncated": "true"} if TRUNCATED_MARK in text else labels
        made: list[Event] = []

        def event(text: str = text, marked: dict[str, str] = marked) -> Event:
            if not made:
                made.append(Event(source="log", message=text, service=watch.service, host=deps.host, labels=marked))
            return made[0]

        if is_event(text, watch, deps.rt.rules, event):
            out.append(event())
    return out


def _commit(deps: TailDeps, old: Position, new: Position, texts: list[str], watch: LogFile,
            lines: int, stats: FileStats) -> Position:
    """Store the new position and the events read before it in one transaction; hand off new incidents."""
    events = to_events(texts, watch, new.path, deps)
    with deps.db.transaction() as conn:
        _save(conn, old, new, lines=lines, events=sum(e.count for e in events))
        accepted = state.report(conn, events, deps.rt)
    stats.lines += lines
    stats.events += len(events)
    for incident_id in accepted.new_incidents:
        stats.new_incidents += 1
        deps.notify(incident_id)
    return replace(new, version=old.version + 1, stored=True)


# --- one file --------------------------------------------------------------------------------


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _open_by_identity(path: str, rot: Rotated) -> BinaryIO | None:
    """The rotated file, looked up by inode among its siblings (app.log.1, app.log-2024..., app.1.log)."""
    folder, name = os.path.split(path)
    stem = name.split(".", 1)[0] or name
    try:
        entries = list(os.scandir(folder or "."))
    except OSError:
        return None
    for entry in entries:
        if not entry.name.startswith(stem):
            continue
        try:
            if entry.inode() != rot.ino:
                continue
            handle = open_regular(entry.path, within=folder or ".")
        except OSError:
            continue
        if FileId.of(os.fstat(handle.fileno())) == FileId(rot.dev, rot.ino):
            return handle
        handle.close()
    return None


def _now(deps: TailDeps) -> datetime:
    return datetime.fromtimestamp(deps.clock(), timezone.utc)


def _held_since(pos_held: datetime | None, r: ReadResult, deps: TailDeps) -> datetime | None:
    if r.held and r.eof:
        return pos_held or _now(deps)
    return None


def _force(held_since: datetime | None, config: LogsConfig, deps: TailDeps) -> bool:
    return held_since is not None and (_now(deps) - held_since).total_seconds() >= config.hold_timeout


def _read(handle: BinaryIO, offset: int, skipping: bool, force: bool, config: LogsConfig) -> ReadResult:
    return read_events(handle, offset, skipping=skipping, max_line_bytes=config.max_line_bytes,
                       budget=config.read_bytes, force=force, max_event_lines=config.max_event_lines)


def _drain_rotated(pos: Position, watch: LogFile, config: LogsConfig, deps: TailDeps, stats: FileStats,
                   budget: _Budget, *, finish: bool = False) -> Position:
    """Read the rotated-away file; forget it once rotate_wait has passed (or `finish`) and it is read."""
    rot = pos.rotated
    assert rot is not None
    handle = _open_by_identity(pos.path, rot)
    if handle is None:
        stats.notes.append(f"rotated file (inode {rot.ino}) is gone; stopped reading it at byte {rot.offset}")
        return _commit(deps, pos, replace(pos, rotated=None), [], watch, 0, stats)
    with handle:
        if head_hash(handle, rot.head_len) != rot.head_hash:
            stats.notes.append(f"inode {rot.ino} now holds another file; the rotated file is gone")
            return _commit(deps, pos, replace(pos, rotated=None), [], watch, 0, stats)
        final = finish or deps.clock() >= rot.until
        while True:
            r = _read(handle, rot.offset, rot.skipping, final, config)
            head_len = min(r.end, HEAD_BYTES)
            rot = replace(rot, offset=r.end, skipping=r.skipping, head_len=head_len,
                          head_hash=head_hash(handle, head_len))
            done = final and r.eof
            new = replace(pos, rotated=None if done else rot)
            if new != pos or r.events:
                pos = _commit(deps, pos, new, r.events, watch, r.lines, stats)
            if r.eof or budget.over():
                return pos


def tail_file(path: str, watch: LogFile, config: LogsConfig, deps: TailDeps, budget: _Budget) -> FileStats:
    """Read what is new in one file (and in the file it was rotated from); the caller holds its lock."""
    stats = FileStats(path)
    try:
        with deps.db.transaction() as conn:
            pos = load_position(conn, path, watch.path)
        if pos.rotated is not None:
            pos = _drain_rotated(pos, watch, config, deps, stats, budget)
        st = _stat(path)
        if pos.file is not None and (st is None or FileId.of(st) != pos.file):
            if pos.rotated is not None:  # rotated twice since it was last drained: finish the older one
                pos = _drain_rotated(pos, watch, config, deps, stats, budget, finish=True)
            moved = Rotated(pos.file.dev, pos.file.ino, pos.offset, pos.head_len, pos.head_hash, pos.skipping,
                            deps.clock() + config.rotate_wait)
            stats.notes.append(f"{path} was rotated or replaced; reading the old file for {config.rotate_wait:g}s")
            pos = _commit(deps, pos, replace(pos, file=None, offset=0, head_len=0, head_hash="", skipping=False,
                                             held_since=None, rotated=moved), [], watch, 0, stats)
            pos = _drain_rotated(pos, watch, config, deps, stats, budget)
        if st is None:
            return stats
        if not stat.S_ISREG(st.st_mode):  # a directory, a FIFO (would block), a device
            stats.skipped = UNREADABLE + "not a regular file"
            return stats
        try:
            handle = open_regular(path, within=root_of(watch.path))
        except FileNotFoundError:
            return stats
        except UnsafeFile as exc:
            stats.skipped = UNREADABLE + exc.strerror
            log.warning("log file not read", path=path, reason=exc.strerror)
            return stats
        with handle:
            budget.keepalive()
            _tail_current(handle, pos, watch, config, deps, stats, budget)
    except _Conflict:
        stats.skipped = "another scanner moved the position first"
    except (PermissionError, IsADirectoryError) as exc:
        stats.skipped = UNREADABLE + str(exc)
        log.warning("cannot read log file", path=path, error=str(exc))
    return stats


def _tail_current(handle: BinaryIO, pos: Position, watch: LogFile, config: LogsConfig, deps: TailDeps,
                  stats: FileStats, budget: _Budget) -> None:
    fid = FileId.of(os.fstat(handle.fileno()))
    if pos.file != fid:
        if pos.file is not None:
            return  # replaced between stat and open: the next scan sees it as a rotation
        pos_start = replace(pos, file=fid, offset=0, head_len=0, head_hash="", skipping=False, held_since=None)
    else:
        size = os.fstat(handle.fileno()).st_size
        if size < pos.offset or head_hash(handle, pos.head_len) != pos.head_hash:
            what = "truncated" if size < pos.offset else "replaced in place"
            stats.notes.append(f"{pos.path} was {what}; reading it from the start")
            pos_start = replace(pos, offset=0, head_len=0, head_hash="", skipping=False, held_since=None)
        else:
            pos_start = pos
    current = pos_start
    while True:
        r = _read(handle, current.offset, current.skipping, _force(current.held_since, config, deps), config)
        head_len = min(r.end, HEAD_BYTES)
        new = replace(current, file=fid, offset=r.end, skipping=r.skipping, head_len=head_len,
                      head_hash=head_hash(handle, head_len) if head_len != current.head_len else current.head_hash,
                      held_since=_held_since(current.held_since, r, deps))
        if new != pos or r.events:
            pos = current = _commit(deps, pos, new, r.events, watch, r.lines, stats)
        if r.eof or budget.over():
            return
