"""The team's Celery apps, watched through their task events: what each event means, in memory, decided here.

`AppWatch` is fed every event of one app (as Celery's event receiver hands them over: plain dicts, from
an untrusted broker, so every field is checked) and keeps what the checks need, bounded:

- task history rows, merged per task between two writes (`take_rows`);
- task failures folded by (task name, exception type, in-app frames): one event per group and write,
  with the count, so a storm of a million failures is one incident (`take_events`);
- a task id started while it already ran or runs: executed twice (`take_events`);
- per worker its last heartbeat and whether it is busy; a worker silent for `offline_after` is lost,
  and the tasks it was running are marked lost (`check`);
- per queue its sampled length: a queue waiting and not shrinking while every online worker is idle is a
  stalled consumer; one growing over `backlog_window` is a backlog, with a drain-time estimate (`check`);
- received tasks not started within `start_within` (after their eta), started ones not finished within
  `finish_within`: overdue (`check`);
- a beat-scheduled task (the app's `periodic`) received twice within half its period: two beats, or one
  schedule listed twice (`take_events`);
- a workflow step that never ran: a chain's next step, a chord's body or a `link=` callback (announced by
  the task before it, client/celery_workflows.py) or the app's `followed_by` task (its child by name), not
  received within `next_within` of that task succeeding — for a chord, of its last header task, and only
  once no header task of its group is still running (`check`).

Nothing here touches the broker or the database: the consumer (celery_events.py) feeds it and the
watch task (tasks/celery_apps.py) writes what it returns through the one ingest entry.

Args and kwargs are the reprs the events carry: text, never evaluated. `recorded_value` turns a repr
back into a value only when it is a plain literal (ast.literal_eval over a size-bounded, complete repr),
and refuses anything else with the reason.
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from erdu_tasks.model import Event
from erdu_tasks.monitors.state import Observation
from erdu_tasks.settings.celery_apps import CeleryApp

SOURCE = "celeryapp"
"""The source of every event this monitor reports; its dedup keys are namespaced `celeryapp:`."""

ENDED = frozenset({"SUCCESS", "FAILURE", "REVOKED", "REJECTED"})

_FRAME = re.compile(r'^\s*File "([^"\n]{1,1000})", line (\d+), in ([^\s]{1,200})', re.M)
_EXC_REPR = re.compile(r"^\s*([A-Za-z_][\w.]{0,200})\(")
_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]{0,200})(?::|$)")
_LIBRARY_PATH = re.compile(r"[/\\](?:site-packages|dist-packages|lib[/\\]python\d(?:\.\d+)?)[/\\]")
MAX_TRACEBACK_CHARS = 16_000
MAX_WORKERS = 1000
"""Workers remembered per app; events naming more (a hostile or broken stream) are skipped."""
MAX_GROUPS = 500
"""Distinct failure groups between two writes; the rest fold into one `overflow` group."""


def _text(value: Any, limit: int) -> str | None:
    """A field as bounded text without NUL (Postgres refuses it), or None."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text[:limit]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _when(ts: float | None) -> datetime | None:
    if ts is None or not 0 < ts < 32503680000:
        return None
    return datetime.fromtimestamp(ts, timezone.utc)


def _iso(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


# --------------------------------------------------------------------------- traceback grouping


def exception_type(exception: str | None, traceback: str | None) -> str:
    """The exception's type: from the traceback's last line (it names the module), else the repr."""
    for line in reversed((traceback or "").strip().splitlines()[-3:]):
        m = _EXC_LINE.match(line.strip())
        if m and not line.startswith(" "):
            return m.group(1)
    m = _EXC_REPR.match(exception or "")
    if m:
        return m.group(1)
    return (exception or "").split(":", 1)[0].strip()[:200] or "Error"


def frames(traceback: str | None) -> list[tuple[str, str]]:
    """(path, function) of every frame of a Python traceback, outermost first."""
    return [(m.group(1), m.group(3)) for m in _FRAME.finditer(traceback or "")]


def _dotted(path: str) -> str:
    path = path.replace("\\", "/")
    if path.endswith(".py"):
        path = path[:-3]
    return ".".join(p for p in path.split("/") if p)


def in_app_frames(traceback: str | None, in_app: Iterable[str]) -> list[str]:
    """The app's own frames as `module:function` (module = file name, so paths of a deployment do not count).

    With `in_app` prefixes, a frame is the app's when its dotted path has a part starting with one (`shop`
    matches .../shop/orders.py); without, when it is outside site-packages and the standard library."""
    prefixes = [p.strip(".") for p in in_app if p.strip(".")]
    out = []
    for path, func in frames(traceback):
        if prefixes:
            dotted = "." + _dotted(path) + "."
            mine = any(f".{p}." in dotted for p in prefixes)
        else:
            mine = not _LIBRARY_PATH.search(path) and not path.startswith("<")
        if mine:
            out.append(f"{_dotted(path).rsplit('.', 1)[-1]}:{func}")
    return out


def failure_key(task: str, exc_type: str, app_frames: list[str]) -> str:
    """What groups failures: task name, exception type and the in-app frames (not line numbers)."""
    digest = hashlib.sha1("\n".join([task, exc_type, *app_frames]).encode()).hexdigest()[:16]
    return f"{task}:{exc_type}:{digest}"


# --------------------------------------------------------------------------- recorded arguments


class NotReplayable(ValueError):
    """A recorded args/kwargs repr that is not a plain literal: it cannot be sent again as it was."""


_MAX_LITERAL_CHARS = 1_000_000
_MAX_DEPTH = 50


def _plain(value: Any, depth: int = 0) -> Any:
    """The literal as JSON values (tuples become lists); anything JSON cannot carry is refused."""
    if depth > _MAX_DEPTH:
        raise NotReplayable("nested too deeply")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotReplayable("holds a NaN or an infinity, which JSON cannot carry")
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise NotReplayable(f"has a non-string key {k!r}, which JSON cannot carry")
            out[k] = _plain(v, depth + 1)
        return out
    if value is Ellipsis:
        raise NotReplayable("was cut when recorded ('...'): the repr is not the whole value")
    raise NotReplayable(f"holds a {type(value).__name__}, which JSON cannot carry")


def recorded_value(text: str | None, *, kind: str) -> Any:
    """The args (a list) or kwargs (a dict) a repr stands for, if it is a plain literal; NotReplayable if not.

    Never evaluates code: ast.literal_eval accepts only literals, the repr is bounded in size, and values
    JSON cannot carry (sets, bytes, objects shown as `<Foo at 0x…>`, a repr cut short) are refused."""
    if text is None or text == "":
        return [] if kind == "args" else {}
    if len(text) > _MAX_LITERAL_CHARS:
        raise NotReplayable(f"{kind} repr is {len(text)} characters, over {_MAX_LITERAL_CHARS}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        hint = " (it was cut when recorded)" if "..." in text else ""   # Celery's saferepr cuts with '...' 
        raise NotReplayable(f"{kind} {text[:120]!r} is not a plain literal{hint}; it cannot be sent again "
                            "as recorded") from None
    try:
        value = _plain(value)
    except NotReplayable as exc:
        raise NotReplayable(f"{kind} {text[:120]!r} {exc}") from None
    if kind == "args" and not isinstance(value, list):
        raise NotReplayable(f"args {text[:120]!r} is not a list or tuple")
    if kind == "kwargs" and not isinstance(value, dict):
        raise NotReplayable(f"kwargs {text[:120]!r} is not a dict")
    return value


# --------------------------------------------------------------------------- state


class _Task:
    __slots__ = ("name", "state", "worker", "executions", "since", "retrying")

    def __init__(self) -> None:
        self.name: str | None = None
        self.state = "PENDING"
        self.worker: str | None = None
        self.executions = 0
        self.since = 0.0
        self.retrying = False   # its last run ended in a retry: the next start is that retry, not a second run


@dataclass
class _Worker:
    hostname: str
    state: str = "online"
    last_seen: float = 0.0
    active: int = 0
    processed: int = 0
    busy_since_check: bool = False
    sw_ident: str | None = None
    sw_ver: str | None = None
    loadavg: list[float] | None = None
    offline_at: float | None = None
    lost_tasks: list[str] = field(default_factory=list)


@dataclass
class _Group:
    """Failures (or doubled runs) folded between two writes."""

    kind: str
    name: str
    exc_type: str = ""
    count: int = 0
    task_ids: list[str] = field(default_factory=list)
    workers: set[str] = field(default_factory=set)
    error: str | None = None
    traceback: str | None = None
    app_frames: list[str] = field(default_factory=list)
    first_at: float = 0.0


@dataclass
class _Await:
    """A step that must arrive: after `after_id` (named `after`) succeeded, `next_id` (or a child named `name`)."""

    kind: str            # chain, chord, link or followed_by
    after_id: str
    after: str
    name: str
    next_id: str | None
    due: float
    group: str | None = None


MAX_STEPS = 20
"""Next steps taken from one announcement (a hostile event naming more is cut)."""


@dataclass(frozen=True)
class CheckResult:
    """One check pass: conditions for the monitor state machine, and one-off events (overdue tasks)."""

    observations: list[Observation]
    events: list[Event]
    lengths: dict[str, int]


_ROW_FIELDS = ("name", "state", "args", "kwargs", "worker", "exception", "error", "traceback", "queue",
               "routing_key", "exchange", "root_id", "parent_id", "retries", "eta", "sent_at", "received_at",
               "started_at", "finished_at", "runtime")
ROW_FIELDS: tuple[str, ...] = _ROW_FIELDS + ("executions",)
"""The history columns a row from take_rows may carry (besides app and task_id)."""


class AppWatch:
    """Everything ERDU keeps in memory about one watched Celery app (one consumer thread feeds it)."""

    def __init__(self, app: CeleryApp, *, host: str | None = None, max_arg_chars: int = 8192) -> None:
        self.app = app
        self.host = host
        self.max_arg_chars = max_arg_chars
        self.tasks: OrderedDict[str, _Task] = OrderedDict()
        self.pending: OrderedDict[str, float] = OrderedDict()    # received, not started: id -> due by
        self.running: OrderedDict[str, float] = OrderedDict()    # started, not ended: id -> due by
        self.workers: dict[str, _Worker] = {}
        self.rows: dict[str, dict[str, Any]] = {}
        self.groups: dict[str, _Group] = {}
        self.samples: dict[str, deque[tuple[float, int]]] = {q: deque() for q in app.queues}
        self.ended: deque[tuple[float, int]] = deque()             # (check time, tasks ended since the last)
        self._ended_since_check = 0
        self._started_since_check = 0
        self.seen = 0
        self.skipped = 0
        self._periodic_last: dict[str, tuple[float, str]] = {}
        self.announced: OrderedDict[str, list[dict[str, str]]] = OrderedDict()   # task id -> its next steps
        self.awaited: OrderedDict[str, _Await] = OrderedDict()   # next-step id (or after>name) -> what awaits it
        self.arrived: OrderedDict[str, None] = OrderedDict()     # step ids (and parent>name) received lately
        self.chord_members: OrderedDict[str, set[str]] = OrderedDict()   # chord group -> its header task ids
        self.member_of: OrderedDict[str, str] = OrderedDict()            # chord header task id -> its group
        self.broken_chords: OrderedDict[str, None] = OrderedDict()       # groups a header task of failed

    def restore_workers(self, rows: Iterable[Mapping[str, Any]], now: float) -> None:
        """Workers a previous watcher saw online (celery_app_workers rows): one that sends nothing within
        `offline_after` of this start is lost, so a worker that died while no watcher ran is still noticed."""
        for row in rows:
            if row.get("state") == "online" and row.get("hostname") and row["hostname"] not in self.workers:
                self.workers[row["hostname"]] = _Worker(row["hostname"], last_seen=now,
                                                        processed=int(row.get("processed") or 0))

    # ------------------------------------------------------------------ events

    def feed(self, event: Mapping[str, Any], now: float) -> None:
        """Take one event (a dict from the receiver); anything malformed is counted as skipped."""
        self.seen += 1
        kind = event.get("type") if isinstance(event, Mapping) else None
        if not isinstance(kind, str):
            self.skipped += 1
            return
        if kind.startswith("worker-"):
            self._worker_event(kind, event, now)
        elif kind == "task-next-steps":
            self._announcement(event, now)
        elif kind.startswith("task-"):
            self._task_event(kind, event, now)
        else:
            self.skipped += 1

    def _worker_event(self, kind: str, ev: Mapping[str, Any], now: float) -> None:
        host = _text(ev.get("hostname"), 255)
        if not host:
            self.skipped += 1
            return
        w = self.workers.get(host)
        if w is None:
            if len(self.workers) >= MAX_WORKERS:
                self.skipped += 1
                return
            w = self.workers[host] = _Worker(host)
        if kind == "worker-offline":
            w.state, w.offline_at = "offline", now
            return
        if kind not in ("worker-online", "worker-heartbeat"):
            return
        if w.state != "online":
            w.state, w.offline_at, w.lost_tasks = "online", None, []
        w.last_seen = now
        active, processed = _number(ev.get("active")), _number(ev.get("processed"))
        w.active = int(active) if active is not None else w.active
        w.processed = int(processed) if processed is not None else w.processed
        w.sw_ident, w.sw_ver = _text(ev.get("sw_ident"), 64) or w.sw_ident, _text(ev.get("sw_ver"), 64) or w.sw_ver
        load = ev.get("loadavg")
        if isinstance(load, list) and len(load) <= 3:
            w.loadavg = [v for v in (_number(x) for x in load) if v is not None]

    def _task(self, task_id: str) -> _Task:
        t = self.tasks.get(task_id)
        if t is None:
            t = self.tasks[task_id] = _Task()
            if len(self.tasks) > self.app.track_tasks:
                self.tasks.popitem(last=False)
        else:
            self.tasks.move_to_end(task_id)
        return t

    def _row(self, task_id: str) -> dict[str, Any]:
        row = self.rows.get(task_id)
        if row is None:
            row = self.rows[task_id] = {"task_id": task_id}
        return row

    def _task_event(self, kind: str, ev: Mapping[str, Any], now: float) -> None:
        task_id = ev.get("uuid")
        if not isinstance(task_id, str) or not 0 < len(task_id) <= 255:
            self.skipped += 1
            return
        ts = _number(ev.get("timestamp")) or now
        host = _text(ev.get("hostname"), 255)
        t, row = self._task(task_id), self._row(task_id)
        name = _text(ev.get("name"), 255)
        if name:
            t.name = row["name"] = name
        if host and kind != "task-sent":
            t.worker = row["worker"] = host
            w = self.workers.get(host)
            if w is None and len(self.workers) < MAX_WORKERS:   # a worker is known by its task events too
                w = self.workers[host] = _Worker(host, last_seen=now)
            if w is not None and w.state == "online":
                w.last_seen = max(w.last_seen, now)    # any event of a worker shows it alive
        if kind in ("task-sent", "task-received"):
            for key in ("args", "kwargs"):
                if key in ev:
                    row[key] = _text(ev.get(key), self.max_arg_chars)
            for key in ("root_id", "parent_id"):
                if ev.get(key):
                    row[key] = _text(ev.get(key), 255)
            retries = _number(ev.get("retries"))
            if retries is not None:
                row["retries"] = int(retries)
            eta = _iso(ev.get("eta"))
            if eta is not None:
                row["eta"] = eta
            if kind == "task-sent":
                for key in ("queue", "routing_key", "exchange"):
                    if ev.get(key) is not None:
                        row[key] = _text(ev.get(key), 255)
                row["sent_at"] = _when(ts)
                if t.state == "PENDING":
                    t.state = row["state"] = "SENT"
                return
            row["received_at"] = _when(ts)
            self._arrive(task_id, t.name, row.get("parent_id"))
            if t.name in self.app.periodic and t.state in ("PENDING", "SENT"):
                self._periodic(t.name, task_id, host, ts)
            t.state = row["state"] = "RECEIVED"
            due = max(now, eta.timestamp() if eta else now) + self.app.thresholds.start_within
            self.pending[task_id] = due
            self.pending.move_to_end(task_id)
            self._bound(self.pending)
            return
        if kind == "task-started":
            # Started again after a run that did not end in a retry (the second message of one id is received
            # before it starts, so the state alone cannot tell): executed twice.
            if t.executions >= 1 and not t.retrying:
                self._fold("duplicate", t.name or "?", task_id, host, now)
            self._arrive(task_id, t.name, None)
            t.retrying = False
            t.executions += 1
            row["executions"] = row.get("executions", 0) + 1
            t.state = row["state"] = "STARTED"
            row["started_at"] = _when(ts)
            self.pending.pop(task_id, None)
            self.running[task_id] = now + self.app.thresholds.finish_within
            self._bound(self.running)
            self._started_since_check += 1
            if host and host in self.workers:
                self.workers[host].busy_since_check = True
            return
        if kind in ("task-succeeded", "task-failed", "task-revoked", "task-rejected", "task-retried"):
            state = {"task-succeeded": "SUCCESS", "task-failed": "FAILURE", "task-revoked": "REVOKED",
                     "task-rejected": "REJECTED", "task-retried": "RETRY"}[kind]
            t.state = row["state"] = state
            t.retrying = kind == "task-retried"
            self.pending.pop(task_id, None)
            self.running.pop(task_id, None)
            if kind in ("task-succeeded", "task-failed", "task-revoked"):
                row["finished_at"] = _when(ts)
                self._ended_since_check += 1
            if kind == "task-succeeded":
                self._succeeded(task_id, t.name, now)
            elif kind != "task-retried":
                self._ended_badly(task_id)
            runtime = _number(ev.get("runtime"))
            if runtime is not None:
                row["runtime"] = runtime
            if kind in ("task-failed", "task-retried"):
                error = _text(ev.get("exception"), 4000)
                tb = _text(ev.get("traceback"), MAX_TRACEBACK_CHARS)
                exc = exception_type(error, tb)
                row.update(exception=exc, error=error, traceback=tb)
                if kind == "task-failed":
                    self._fold("failure", t.name or "?", task_id, host, now, exc_type=exc, error=error, tb=tb)
            return
        self.skipped += 1

    # ------------------------------------------------------------------ workflows

    def _announcement(self, ev: Mapping[str, Any], now: float) -> None:
        """A task's next steps (client/celery_workflows.py), checked field by field."""
        task_id, steps = ev.get("uuid"), ev.get("steps")
        if not isinstance(task_id, str) or not 0 < len(task_id) <= 255 or not isinstance(steps, list):
            self.skipped += 1
            return
        clean = []
        for step in steps[:MAX_STEPS]:
            if not isinstance(step, Mapping) or step.get("kind") not in ("chain", "chord", "link"):
                continue
            sid, name = _text(step.get("id"), 255), _text(step.get("name"), 255)
            if not sid or not name:
                continue
            group = _text(step.get("group"), 255) if step.get("kind") == "chord" else None
            clean.append({"kind": step["kind"], "id": sid, "name": name, "group": group or ""})
            if group:
                members = self.chord_members.setdefault(group, set())
                if len(members) < 10_000:
                    members.add(task_id)
                self.member_of[task_id] = group
                self._bound(self.chord_members)
                self._bound(self.member_of)
        if not clean:
            self.skipped += 1
            return
        t = self._task(task_id)
        if t.state == "SUCCESS":       # its success arrived first (another connection): await the steps now
            self._await(task_id, t.name or "?", clean, now)
        else:
            self.announced[task_id] = clean
            self._bound(self.announced)

    def _arrive(self, task_id: str, name: str | None, parent_id: str | None) -> None:
        keys = [task_id] + ([f"{parent_id}>{name}"] if parent_id and name else [])
        for key in keys:   # remembered even when awaited: a late header success must not await it again
            self.awaited.pop(key, None)
            self.arrived[key] = None
            self.arrived.move_to_end(key)
        self._bound(self.arrived)

    def _succeeded(self, task_id: str, name: str | None, now: float) -> None:
        steps = self.announced.pop(task_id, [])
        follower = self.app.followed_by.get(name or "")
        if follower:
            steps = steps + [{"kind": "followed_by", "id": "", "name": follower, "group": ""}]
        if steps:
            self._await(task_id, name or "?", steps, now)

    def _await(self, task_id: str, name: str, steps: list[dict[str, str]], now: float) -> None:
        due = now + self.app.thresholds.next_within
        for step in steps:
            key = step["id"] or f"{task_id}>{step['name']}"
            if key in self.arrived or (step["group"] and step["group"] in self.broken_chords):
                continue
            self.awaited[key] = _Await(step["kind"], task_id, name, step["name"], step["id"] or None, due,
                                       step["group"] or None)
            self.awaited.move_to_end(key)   # a chord body's deadline runs from its last header task
        self._bound(self.awaited)

    def _ended_badly(self, task_id: str) -> None:
        """A failed, revoked or rejected task's steps will not run, by Celery's design: nothing awaits them."""
        groups = {self.member_of.pop(task_id)} if task_id in self.member_of else set()
        for step in self.announced.pop(task_id, []):
            self.awaited.pop(step["id"], None)
            if step["group"]:
                groups.add(step["group"])
        for group in groups:            # the chord's body will not run: Celery fails the chord instead
            self.chord_members.pop(group, None)
            self.broken_chords[group] = None
            for key in [k for k, a in self.awaited.items() if a.group == group]:
                del self.awaited[key]
        self._bound(self.broken_chords)

    def _workflows(self, now: float) -> list[Event]:
        """Steps past their deadline, one event per (kind, task before, step) with the count."""
        groups: dict[tuple[str, str, str], list[_Await]] = {}
        for key, a in list(self.awaited.items()):
            if a.due > now:
                continue
            if a.kind == "chord" and any(self._unfinished(m) for m in self.chord_members.get(a.group or "", ())):
                a.due = now + self.app.thresholds.next_within   # a header task still runs: the body waits for it
                continue
            del self.awaited[key]
            if a.group:
                self.chord_members.pop(a.group, None)
            groups.setdefault((a.kind, a.after, a.name), []).append(a)
        out = []
        within = self.app.thresholds.next_within
        for (kind, after, name), found in groups.items():
            sent = [a.next_id for a in found if a.next_id and (t := self.tasks.get(a.next_id)) and t.state == "SENT"]
            what = {"chain": "the next step of a chain", "chord": "the body of a chord", "link": "a link callback",
                    "followed_by": "the task that follows it"}[kind]
            after_what = f"its header task {after}" if kind == "chord" else after
            how = ("it was sent but no worker received it" if sent and len(sent) == len(found)
                   else "it was never received")
            message = (f"Celery workflow of app {self.app.name} broke: {what}, {name}, did not run within "
                       f"{within:g} s of {after_what} succeeding ({how})")
            out.append(self._base(
                "workflow", f"{kind}:{after}>{name}", message, self.app.severity.workflow, len(found),
                {"task": name[:200], "after": after[:200], "step": kind},
                {"step": kind, "task": name, "after": after, "within_seconds": within,
                 "after_task_ids": [a.after_id for a in found][:20],
                 "missing_task_ids": [a.next_id for a in found if a.next_id][:20], "sent_not_received": sent[:20],
                 "groups": sorted({a.group for a in found if a.group})[:20]}))
        return out

    def _unfinished(self, task_id: str) -> bool:
        t = self.tasks.get(task_id)
        return t is not None and t.state not in ENDED

    def _periodic(self, name: str, task_id: str, host: str | None, ts: float) -> None:
        last = self._periodic_last.get(name)
        if last is not None and last[1] != task_id and 0 <= ts - last[0] < self.app.periodic[name] / 2:
            self._fold("double_schedule", name, task_id, host, ts)
            group = self.groups.get(f"double_schedule:{failure_key(name, '', [])}")
            if group is not None and len(group.task_ids) < 20 and last[1] not in group.task_ids:
                group.task_ids.insert(len(group.task_ids) - 1, last[1])   # the earlier one, before the double
        self._periodic_last[name] = (ts, task_id)

    def _bound(self, ordered: OrderedDict[str, Any]) -> None:
        while len(ordered) > self.app.track_tasks:
            ordered.popitem(last=False)

    def _fold(self, kind: str, name: str, task_id: str, host: str | None, now: float, *, exc_type: str = "",
              error: str | None = None, tb: str | None = None) -> None:
        app_frames = in_app_frames(tb, self.app.in_app) if kind == "failure" else []
        key = f"{kind}:{failure_key(name, exc_type, app_frames)}"
        if key not in self.groups and len(self.groups) >= MAX_GROUPS:
            name, exc_type, app_frames, error, tb = "(many tasks)", "(overflow)", [], None, None
            key = f"{kind}:overflow"
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = _Group(kind, name, exc_type, error=error, traceback=tb, app_frames=app_frames,
                                          first_at=now)
        g.count += 1
        if len(g.task_ids) < 20:
            g.task_ids.append(task_id)
        if host and len(g.workers) < 20:
            g.workers.add(host)

    # ------------------------------------------------------------------ what to write

    def take_rows(self) -> list[dict[str, Any]]:
        """History rows changed since the last call (one per task, its fields merged)."""
        rows, self.rows = list(self.rows.values()), {}
        return rows

    def take_events(self) -> list[Event]:
        """Failure and doubled-run events folded since the last call (one per group, with its count)."""
        groups, self.groups = list(self.groups.values()), {}
        return [self._group_event(g) for g in groups]

    def _base(self, kind: str, key: str, message: str, severity: Any, count: int, labels: dict[str, str],
              details: dict[str, Any], at: float | None = None) -> Event:
        return Event(source=SOURCE, message=message, severity=severity, service=self.app.service_name,
                     host=self.host, dedup_key=f"celeryapp:{self.app.name}:{kind}:{key}"[:255], count=count,
                     occurred_at=_when(at), labels={"app": self.app.name, "kind": kind, **labels},
                     details={"app": self.app.name, **details})

    def _group_event(self, g: _Group) -> Event:
        if g.kind == "double_schedule":
            period = self.app.periodic.get(g.name, 0)
            return self._base(
                "double_schedule", g.name, f"Celery task {g.name} of app {self.app.name} scheduled twice within its "
                f"period of {period:g} s (two beats running, or the schedule listed twice)",
                self.app.severity.double_schedule, g.count, {"task": g.name[:200]},
                {"task": g.name, "period_seconds": period, "task_ids": g.task_ids[:20], "workers": sorted(g.workers)},
                g.first_at)
        if g.kind == "duplicate":
            return self._base(
                "duplicate", g.name, f"Celery task {g.name} of app {self.app.name} executed twice (same task id)",
                self.app.severity.duplicate, g.count, {"task": g.name[:200]},
                {"task": g.name, "task_ids": g.task_ids, "workers": sorted(g.workers)}, g.first_at)
        head = f"{g.exc_type} in Celery task {g.name} of app {self.app.name}"
        if g.error:
            head += f": {g.error.splitlines()[0][:500] if g.error.strip() else ''}"
        message = head + ("\n" + g.traceback.strip() if g.traceback else "")
        return self._base(
            "failure", failure_key(g.name, g.exc_type, g.app_frames), message, self.app.severity.failure, g.count,
            {"task": g.name[:200], "exception": g.exc_type[:200]},
            {"task": g.name, "exception": g.exc_type, "error": g.error, "traceback": g.traceback,
             "in_app_frames": g.app_frames, "task_ids": g.task_ids, "workers": sorted(g.workers)}, g.first_at)

    # ------------------------------------------------------------------ periodic checks

    def online(self) -> list[_Worker]:
        """Workers whose heartbeats still arrive."""
        return [w for w in self.workers.values() if w.state == "online"]

    def check(self, now: float, lengths: Mapping[str, int]) -> CheckResult:
        """Workers lost, queues stalled or growing, tasks overdue: once per check interval."""
        th = self.app.thresholds
        obs: list[Observation] = []
        for w in list(self.workers.values()):
            if w.state == "online" and now - w.last_seen > th.offline_after:
                w.state, w.offline_at = "lost", now
                w.lost_tasks = self._lose_tasks_of(w.hostname)
            if w.state != "online" and w.offline_at is not None and now - w.offline_at > 86400:
                del self.workers[w.hostname]
                continue
            obs.append(self._worker_observation(w))
        idle = [w for w in self.online() if w.active == 0 and not w.busy_since_check]
        all_idle = bool(self.online()) and len(idle) == len(self.online()) and self._started_since_check == 0
        self.ended.append((now, self._ended_since_check))
        while self.ended and now - self.ended[0][0] > th.backlog_window:
            self.ended.popleft()
        for queue in self.app.queues:
            length = lengths.get(queue)
            if length is None:
                continue
            samples = self.samples.setdefault(queue, deque())
            previous = samples[-1][1] if samples else None
            samples.append((now, length))
            while samples and now - samples[0][0] > th.backlog_window:
                samples.popleft()
            stalled = length > 0 and previous is not None and length >= previous and all_idle
            obs.append(self._stall_observation(queue, length, stalled))
            obs.append(self._backlog_observation(queue, samples, now))
        for w in self.workers.values():
            w.busy_since_check = False
        self._started_since_check = self._ended_since_check = 0
        return CheckResult(obs, self._overdue(now) + self._workflows(now), dict(lengths))

    def _lose_tasks_of(self, hostname: str) -> list[str]:
        """A lost worker's started tasks are lost (their rows say so); returns their ids."""
        lost = [tid for tid in self.running if (t := self.tasks.get(tid)) is not None and t.worker == hostname]
        for tid in lost:
            self.running.pop(tid, None)
            self.tasks[tid].state = "LOST"
            self._row(tid)["state"] = "LOST"
        return lost[:100]

    def _worker_observation(self, w: _Worker) -> Observation:
        failing = w.state == "lost" or (w.state == "offline" and self.app.offline_on_shutdown)
        how = {"online": "online", "offline": "went offline (it said goodbye)",
               "lost": f"lost: no heartbeat for over {self.app.thresholds.offline_after:g} s"}[w.state]
        data = {"app": self.app.name, "worker": w.hostname, "state": w.state, "lost_tasks": w.lost_tasks}
        event = self._base("offline", w.hostname, f"Celery worker {w.hostname} of app {self.app.name} is offline",
                           self.app.severity.offline, 1, {"worker": w.hostname[:200]}, data)
        return Observation(key=f"celeryapp:{self.app.name}:worker:{w.hostname}"[:255], failing=failing,
                           detail=f"worker {w.hostname} {how}", event=event, data=data, repeat=False,
                           resolve_on_recovery=True, top_details={"lost_tasks": w.lost_tasks})

    def _stall_observation(self, queue: str, length: int, stalled: bool) -> Observation:
        online = sorted(w.hostname for w in self.online())
        data = {"app": self.app.name, "queue": queue, "length": length, "workers": online}
        event = self._base("stalled", queue,
                           f"Celery queue {queue} of app {self.app.name} stalled: messages wait while its workers "
                           "are online and idle", self.app.severity.stalled, 1, {"queue": queue}, data)
        detail = (f"{length} message(s) waiting in {queue}, not shrinking, {len(online)} worker(s) online and idle"
                  if stalled else f"{length} message(s) in {queue}")
        return Observation(key=f"celeryapp:{self.app.name}:stall:{queue}"[:255], failing=stalled, detail=detail,
                           event=event, data=data, sustained_for=self.app.thresholds.stall_for, repeat=False,
                           resolve_on_recovery=True)

    def _backlog_observation(self, queue: str, samples: deque[tuple[float, int]], now: float) -> Observation:
        th = self.app.thresholds
        length = samples[-1][1]
        span = now - samples[0][0]
        growth = _slope(samples)
        ended = sum(n for t, n in self.ended if t > samples[0][0])
        drain = ended / span if span > 0 else 0.0
        inflow = max(0.0, growth + drain)
        growing = (length >= th.backlog_min and span >= 0.8 * th.backlog_window and growth > 0
                   and length > samples[0][1])
        estimate = drain_estimate(length, inflow, drain)
        data = {"app": self.app.name, "queue": queue, "length": length, "growth_per_second": round(growth, 3),
                "drained_per_second": round(drain, 3), "inflow_per_second": round(inflow, 3), **estimate}
        when = ("never at the current rates" if estimate["drain_seconds"] is None
                else f"in about {estimate['drain_seconds']:.0f} s")
        message = (f"Celery queue {queue} of app {self.app.name}: backlog grows faster than it drains "
                   f"({length} waiting, +{growth:.1f}/s, draining {drain:.1f}/s; drains {when})")
        event = self._base("backlog", queue, message, self.app.severity.backlog, 1, {"queue": queue}, data)
        return Observation(key=f"celeryapp:{self.app.name}:backlog:{queue}"[:255], failing=growing,
                           detail=message if growing else f"{length} message(s) in {queue}", event=event, data=data,
                           repeat=False, resolve_on_recovery=True, top_details={"drain": estimate})

    def _overdue(self, now: float) -> list[Event]:
        groups: dict[tuple[str, str], list[str]] = {}
        for phase, ordered in (("not-started", self.pending), ("not-finished", self.running)):
            late = [tid for tid, due in ordered.items() if due <= now]
            for tid in late:
                del ordered[tid]
                t = self.tasks.get(tid)
                groups.setdefault((phase, (t.name if t else None) or "?"), []).append(tid)
        th = self.app.thresholds
        out = []
        for (phase, name), ids in groups.items():
            limit = th.start_within if phase == "not-started" else th.finish_within
            verb = "started" if phase == "not-started" else "finished"
            out.append(self._base(
                "overdue", f"{phase}:{name}",
                f"Celery task {name} of app {self.app.name} not {verb} within {limit:g} s", self.app.severity.overdue,
                len(ids), {"task": name[:200], "phase": phase}, {"task": name, "phase": phase, "task_ids": ids[:20],
                                                                   "within_seconds": limit}))
        return out

    def memory_items(self) -> dict[str, int]:
        """Sizes of what is kept in memory (for the bench and the watcher's status line)."""
        return {"tasks": len(self.tasks), "pending": len(self.pending), "running": len(self.running),
                "workers": len(self.workers), "rows": len(self.rows), "groups": len(self.groups),
                "announced": len(self.announced), "awaited": len(self.awaited), "arrived": len(self.arrived)}


def _slope(samples: deque[tuple[float, int]]) -> float:
    """Least-squares growth of a queue's length, messages per second."""
    n = len(samples)
    if n < 2:
        return 0.0
    t0 = samples[0][0]
    xs = [t - t0 for t, _ in samples]
    ys = [float(v) for _, v in samples]
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var


def drain_estimate(length: int, inflow: float, drain: float) -> dict[str, float | None]:
    """How long the backlog takes to drain at the current rates (None: never), and if inflow stopped now."""
    net = drain - inflow
    return {"drain_seconds": round(length / net, 1) if net > 0 else None,
            "drain_seconds_if_inflow_stops": round(length / drain, 1) if drain > 0 else None}
