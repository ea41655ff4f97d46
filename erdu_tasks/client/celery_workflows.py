"""Let ERDU see a Celery app's chains and chords: one call in the team's app, `announce_next_steps(app)`.

Celery's task events say which task ran, not what was meant to run after it: a chain's remaining steps and
a chord's body travel inside the task message, which no event carries. With this hook each task that has
a next step sends one custom event, `task-next-steps`, as it starts (on the app's own event channel, which
ERDU's watcher already reads), naming the ids and names of what must follow it:

- a chain step: the next step (for a group or chord as the next step, each of its header tasks);
- a chord header task: the chord's body, and the group it belongs to (the body runs once every header
  task of the group has succeeded);
- `link=` callbacks: each callback.

ERDU then reports a step that never arrived within `thresholds.next_within` seconds of the task before it
succeeding (monitors/celery_apps.py). A task with no next step sends nothing. The event carries ids and
task names only, never arguments. Usage, in the module that builds the team's app::

    from erdu_tasks.client.celery_workflows import announce_next_steps
    announce_next_steps(app)

Imports Celery only: the team's app needs nothing else of ERDU.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

EVENT_TYPE = "task-next-steps"
MAX_STEPS = 20
"""Steps announced per task (a group of thousands as the next step is announced by its first 20)."""


def _plain(signature: Any, kind: str, out: list[dict[str, str]], depth: int = 0) -> None:
    """Add the plain tasks a signature dict stands for (a group's or chord's header tasks, not the group)."""
    if not isinstance(signature, Mapping) or len(out) >= MAX_STEPS or depth > 5:
        return
    subtype = signature.get("subtask_type")
    kwargs = signature.get("kwargs") if isinstance(signature.get("kwargs"), Mapping) else {}
    if subtype in ("group", "chord"):
        members = kwargs.get("tasks" if subtype == "group" else "header") or []
        if isinstance(members, Mapping):    # a group of one travels as its signature
            members = [members]
        for member in members if isinstance(members, Iterable) else []:
            _plain(member, kind, out, depth + 1)
        return
    if subtype == "chain":
        tasks = kwargs.get("tasks") or []
        if isinstance(tasks, list) and tasks:
            _plain(tasks[0], kind, out, depth + 1)
        return
    options = signature.get("options") if isinstance(signature.get("options"), Mapping) else {}
    task_id, name = options.get("task_id"), signature.get("task")
    if isinstance(task_id, str) and isinstance(name, str):
        out.append({"kind": kind, "id": task_id, "name": name})


def next_steps(request: Any) -> list[dict[str, str]]:
    """What must run after the task of this request succeeds: [{kind, id, name}] (kind chain, chord or link)."""
    steps: list[dict[str, str]] = []
    chain = getattr(request, "chain", None)
    if isinstance(chain, list) and chain:
        _plain(chain[-1], "chain", steps)   # the remaining steps, last first
    chord = getattr(request, "chord", None)
    if isinstance(chord, Mapping):
        before = len(steps)
        _plain(chord, "chord", steps)
        for step in steps[before:]:
            step["group"] = str(getattr(request, "group", "") or "")
    for callback in getattr(request, "callbacks", None) or []:
        _plain(callback, "link", steps)
    return steps[:MAX_STEPS]


def announce_next_steps(app: Any) -> None:
    """Connect the handler to the app's task_prerun signal (once; calling again does nothing)."""
    from celery.signals import task_prerun

    def _announce(sender: Any = None, task: Any = None, **_: Any) -> None:
        if task is None or getattr(task, "app", None) is not app:
            return
        try:
            steps = next_steps(task.request)
            if steps:
                task.send_event(EVENT_TYPE, steps=steps, retry=False)
        except Exception:   # never fail the team's task because its announcement could not be sent
            pass

    if not getattr(app, "_erdu_announces_next_steps", False):
        app._erdu_announces_next_steps = _announce   # a strong reference: signals hold handlers weakly
        task_prerun.connect(_announce, weak=False)
