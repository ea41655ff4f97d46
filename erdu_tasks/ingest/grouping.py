"""What people teach the grouper, and why an incident has its key.

A *merge* says "fingerprint A is fingerprint B": A's new events go to B, A's open incident
becomes B's when B has none, and what ERDU learned about A (pattern counts, per-runbook fix
records) is added to B's. A *split* says "the value of this <*> of fingerprint F's template
matters": F's new events get a key of their own for each value there. Both live in Postgres
(store/grouping.py) and are applied to every event ingest folds; each process caches them and
reloads when the version counter the change bumped has moved, so a change holds from the next
batch on, in every ingest process.

`why` tells how an incident got its key: the step that made the template, the values masked
and the rules that masked them (kept on the incident at ingest), and the overrides applied.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Any

import psycopg

from erdu_tasks.ingest.detect.fingerprint import MASK, Template, explain, slots, template_key
from erdu_tasks.store import grouping as store
from erdu_tasks.store.incidents import add_timeline

FINGERPRINT_RE = re.compile(r"^[0-9a-f]{16}$|^dk-[0-9a-f]{24}$")
_MAX_HOPS = 20


class GroupingRefused(ValueError):
    """A merge or split that cannot be made (unknown fingerprint, a cycle, no such slot); the message says why."""


@dataclass(frozen=True)
class Resolved:
    """The key an event is filed under after the overrides, the template behind it and the steps taken."""

    key: str
    template: str
    steps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Overrides:
    """Merges (fingerprint -> the fingerprint it is) and splits (fingerprint -> the slots whose value counts)."""

    merges: dict[str, str] = field(default_factory=dict)
    splits: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> Overrides:
        """Build from the stored rows."""
        merges: dict[str, str] = {}
        splits: dict[str, list[int]] = {}
        for r in rows:
            if r["kind"] == "merge":
                merges[r["fingerprint"]] = r["target"]
            else:
                splits.setdefault(r["fingerprint"], []).append(int(r["slot"]))
        return cls(merges, {k: tuple(sorted(v)) for k, v in splits.items()})

    def resolve(self, tpl: Template, message: str, service: str | None) -> Resolved:
        """Apply a split of tpl.key (if any), then the merges, to an event's fingerprint."""
        key, template, steps = tpl.key, tpl.template, []
        chosen = self.splits.get(key)
        if chosen and "\n" not in message.strip():
            template = keep_slots(message, chosen)
            key = template_key(template, service)
            steps.append(f"split {tpl.key}: the value of <*> {', '.join(map(str, chosen))} counts -> {key}")
        key, hops = self.merged(key)
        steps += [f"merged {a} into {b}" for a, b in hops]
        return Resolved(key, template, tuple(steps))

    def merged(self, key: str) -> tuple[str, list[tuple[str, str]]]:
        """Where merges lead a key, and the hops taken (at most a few; a stored cycle stops at its start)."""
        hops: list[tuple[str, str]] = []
        seen = {key}
        while key in self.merges and len(hops) < _MAX_HOPS:
            nxt = self.merges[key]
            if nxt in seen:
                break
            hops.append((key, nxt))
            seen.add(nxt)
            key = nxt
        return key, hops


NO_OVERRIDES = Overrides()


def keep_slots(message: str, chosen: tuple[int, ...]) -> str:
    """The message's single-line template with the values of the chosen <*> (1 = first) written out."""
    template, found = slots(message.strip())
    parts = template.split(MASK)
    out = [parts[0]]
    for i, rest in enumerate(parts[1:], start=1):
        value = found[i - 1].text if i - 1 < len(found) else MASK
        out.append((f"«{value}»" if i in chosen else MASK) + rest)
    return "".join(out)


class _Cache:
    """The overrides of each database this process ingests into, with the version they were loaded at."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_db: dict[str, tuple[int, Overrides]] = {}

    def get(self, conn: psycopg.Connection) -> Overrides:
        db, version = store.version(conn)
        cached = self._by_db.get(db)
        if cached is not None and cached[0] == version:
            return cached[1]
        overrides = Overrides.from_rows(store.load(conn))
        with self._lock:
            self._by_db[db] = (version, overrides)
        return overrides


_cache = _Cache()


def current(conn: psycopg.Connection) -> Overrides:
    """The overrides in force now (one small query when they have not changed since the last call)."""
    return _cache.get(conn)


def explanation(tpl: Template, message: str, service: str | None, resolved: Resolved) -> dict[str, Any]:
    """What an incident keeps about how its key was made (computed once per new group, not per event)."""
    found = explain(message, service)
    found["steps"] = list(resolved.steps)
    if resolved.key != tpl.key:
        found["key"] = resolved.key
        found["template"] = resolved.template
        found["computed_key"] = tpl.key
    return found


# --- what people do ------------------------------------------------------------------------------

def fingerprint_of(conn: psycopg.Connection, ref: str) -> str:
    """A fingerprint given as itself or as an incident id whose fingerprint it is."""
    ref = ref.strip()
    if FINGERPRINT_RE.match(ref):
        return ref
    row = conn.execute("SELECT fingerprint FROM incidents WHERE id = %s", (ref,)).fetchone()
    if row is None:
        raise GroupingRefused(f"{ref!r} is neither a fingerprint (16 hex digits) nor an incident id")
    return row["fingerprint"]


def _template_of(conn: psycopg.Connection, fp: str) -> str | None:
    row = conn.execute("SELECT template FROM error_patterns WHERE fingerprint = %s", (fp,)).fetchone() or \
        conn.execute("SELECT template FROM incidents WHERE fingerprint = %s ORDER BY created_at DESC LIMIT 1",
                     (fp,)).fetchone()
    return row["template"] if row else None


def merge(conn: psycopg.Connection, source_ref: str, target_ref: str, by: str, note: str | None = None) -> str:
    """Teach "source is target" (in the caller's transaction); a one-line account of what changed."""
    store.lock(conn)
    source, target = fingerprint_of(conn, source_ref), fingerprint_of(conn, target_ref)
    for fp in (source, target):
        if _template_of(conn, fp) is None:
            raise GroupingRefused(f"no incident or pattern has fingerprint {fp}")
    overrides = Overrides.from_rows(store.load(conn))
    final, _ = overrides.merged(target)
    if final == source or source == target:
        raise GroupingRefused(f"{source} and {target} are already one group")
    if source in overrides.merges:
        raise GroupingRefused(f"{source} is already merged into {overrides.merges[source]}; remove that override first")
    override_id = store.add_merge(conn, source, final, by, note)
    store.merge_learning(conn, source, final)
    said = f"override {override_id}: {source} is now {final}; its learned statistics were added to {final}'s"
    moved = store.open_incident(conn, source)
    if moved is not None:
        kept = store.open_incident(conn, final)
        if kept is None and store.rekey_incident(conn, moved, final):
            add_timeline(conn, moved, actor=by, what=f"grouping: fingerprint {source} merged into {final}; "
                                                      "this incident now takes both",
                         details={"override": override_id, "from": source, "to": final})
            said += f"; open incident {moved} now takes both"
        else:
            kept = kept or store.open_incident(conn, final)
            add_timeline(conn, moved, actor=by, what=f"grouping: fingerprint {source} merged into {final}; new "
                                                      f"occurrences go to {kept}",
                         details={"override": override_id, "from": source, "to": final, "incident": kept})
            said += f"; new occurrences go to {kept} ({moved} stays open until someone closes it)"
    store.bump(conn)
    return said


def split(conn: psycopg.Connection, ref: str, slot: int, by: str, note: str | None = None) -> str:
    """Teach "the value of <*> number `slot` of this fingerprint's template matters"; a one-line account."""
    store.lock(conn)
    fp = fingerprint_of(conn, ref)
    template = _template_of(conn, fp)
    if template is None:
        raise GroupingRefused(f"no incident or pattern has fingerprint {fp}")
    if template.startswith(("Traceback ", "Stack ")) or "\n" in template:
        raise GroupingRefused("only single-line templates can be split; a trace's key is its types and frames")
    count = template.count(MASK)
    if not 1 <= slot <= count:
        raise GroupingRefused(f"the template of {fp} has {count} <*> (choose 1 to {count}): {template}")
    override_id = store.add_split(conn, fp, slot, by, note)
    if override_id is None:
        raise GroupingRefused(f"<*> {slot} of {fp} already counts")
    store.bump(conn)
    return f"override {override_id}: in {fp} ({template}) the value of <*> {slot} now counts"


def remove(conn: psycopg.Connection, override_id: int) -> str:
    """Drop an override (new events are grouped as before it); a one-line account."""
    store.lock(conn)
    row = store.remove(conn, override_id)
    if row is None:
        raise GroupingRefused(f"no grouping override {override_id}")
    store.bump(conn)
    what = f"{row['fingerprint']} -> {row['target']}" if row["kind"] == "merge" else \
        f"{row['fingerprint']} <*> {row['slot']}"
    return f"removed override {override_id} ({row['kind']} {what}); learned statistics stay where they are"


def listing(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every override, oldest first."""
    return store.load(conn)


def why(conn: psycopg.Connection, incident_id: str) -> dict[str, Any] | None:
    """How the incident got its key, or None if there is no such incident."""
    row = conn.execute("SELECT id, fingerprint, template, service, error_details FROM incidents WHERE id = %s",
                       (incident_id,)).fetchone()
    if row is None:
        return None
    details = row["error_details"] or {}
    grouping = details.get("grouping")
    if details.get("dedup_key"):
        grouping = {"step": "the producer's dedup_key: the fingerprint is its hash, no template is made",
                    "dedup_key": details["dedup_key"], "template": row["template"], "masked": [], "masked_total": 0}
    elif grouping is None:
        grouping = explain(details.get("message") or row["template"], row["service"])
        grouping["recomputed"] = "kept before explanations were stored: recomputed now from the first occurrence"
        grouping["version"] = 1
    return {"incident_id": row["id"], "fingerprint": row["fingerprint"], "version": grouping.get("version", 1),
            **grouping, "overrides_now": [dict(o, created_at=o["created_at"].isoformat())
                                          for o in overrides_touching(conn, row["fingerprint"])]}


def overrides_touching(conn: psycopg.Connection, fp: str) -> list[dict[str, Any]]:
    """The overrides that name a fingerprint (as source or target)."""
    return [r for r in store.load(conn) if fp in (r["fingerprint"], r["target"])]
