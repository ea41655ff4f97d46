"""From events to incidents: the one entry every producer path calls.

`accept` classifies and fingerprints the events, folds them by fingerprint and upserts one
incident per fingerprint, inside the caller's transaction when given a connection (so a
producer stores its own records, such as a monitor's state, a log offset or an alert instance,
in the same commit). It returns which incidents are new; the caller hands those on once the
transaction has committed (tasks/publish.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from psycopg.types.json import Jsonb

from erdu_tasks.store import grouping as grouping_store, history, incidents as store
from erdu_tasks.store.db import Database, later
from erdu_tasks.catalog import Catalog
from erdu_tasks.ingest import grouping
from erdu_tasks.ingest.detect.fingerprint import GROUPING_VERSION, fingerprint, previous_keys
from erdu_tasks.ingest.detect.rules import RuleSet
from erdu_tasks.escalation.runs import open_run
from erdu_tasks.model import Event, Severity, Status
from erdu_tasks.names import REASSESSED_IN


class _IngestSettings(Protocol):
    @property
    def flap_window_seconds(self) -> float: ...


class IngestRuntime(Protocol):
    """What accept needs from the process's runtime: the settings, the rules and the catalog."""

    @property
    def settings(self) -> _IngestSettings: ...

    @property
    def rules(self) -> RuleSet: ...

    @property
    def catalog(self) -> Catalog: ...


@dataclass
class Group:
    """Events that share a fingerprint, folded into one upsert."""

    fingerprint: str
    template: str
    title: str
    severity: Severity
    first: Event
    tags: set[str] = field(default_factory=set)
    count: int = 0
    samples: list[str] = field(default_factory=list)
    grouping: dict[str, Any] = field(default_factory=dict)
    previous: dict[int, str] = field(default_factory=dict)
    """Keys earlier grouping versions gave these events: an open incident under one of them takes them."""


@dataclass(frozen=True)
class Outcome:
    """Where one folded group of events landed."""

    incident_id: str
    fingerprint: str
    created: bool
    occurrences: int
    count: int
    reopened_from: str | None = None
    reassess: bool = False


@dataclass(frozen=True)
class IngestResult:
    """What ingest did with a batch."""

    outcomes: list[Outcome]
    ignored: int

    @property
    def new_incidents(self) -> list[str]:
        """Ids of incidents opened by this batch (each starts one chain)."""
        return [o.incident_id for o in self.outcomes if o.created]

    @property
    def to_reassess(self) -> list[str]:
        """Ids of incidents past their assessment whose severity this batch raised (each is re-assessed)."""
        return [o.incident_id for o in self.outcomes if o.reassess]

    def for_dedup_key(self, dedup_key: str) -> Outcome | None:
        """The outcome of the event sent with this dedup_key, or None if an ignore rule dropped it."""
        fp = dedup_fingerprint(dedup_key)
        return next((o for o in self.outcomes if o.fingerprint == fp), None)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {
            "incidents": [
                {"id": o.incident_id, "new": o.created, "occurrences": o.occurrences, "count": o.count}
                for o in self.outcomes
            ],
            "ignored": self.ignored,
        }


def dedup_fingerprint(dedup_key: str) -> str:
    """A producer's dedup_key becomes the fingerprint, hashed to a fixed size."""
    return "dk-" + hashlib.sha1(dedup_key.encode("utf-8")).hexdigest()[:24]


def accept(into: psycopg.Connection | Database, events: Sequence[Event], rt: IngestRuntime, *,
           overrides: grouping.Overrides | None = None) -> IngestResult:
    """Fold the events and upsert their incidents; the flap window is the one in rt.settings.

    `into` is a connection (the upsert joins its open transaction) or a Database (the events are
    folded first, then stored in a pipelined transaction of their own). `overrides`: the grouping
    overrides the caller already read in this transaction (else they are read here).

    On a pipelined connection a new incident costs a round trip for the grouping overrides, one for
    its upsert (with what is owed to a new incident, sent by the id it would get) and the commit.
    """
    flap_window = rt.settings.flap_window_seconds
    if isinstance(into, Database):
        with into.pipelined() as conn:
            groups, ignored = fold(events, rt.rules, overrides if overrides is not None else grouping.current(conn))
            outcomes = _upsert_groups(conn, groups, rt.catalog, flap_window=flap_window)
    else:
        groups, ignored = fold(events, rt.rules, overrides if overrides is not None else grouping.current(into))
        outcomes = _upsert_groups(into, groups, rt.catalog, flap_window=flap_window)
    return IngestResult(outcomes, ignored)


def fold(events: Sequence[Event], rules: RuleSet,
         overrides: grouping.Overrides = grouping.NO_OVERRIDES) -> tuple[list[Group], int]:
    """Classify and fingerprint each event, apply people's merges and splits, and fold them by fingerprint.

    Returns the groups and the ignored count.
    """
    groups: dict[str, Group] = {}
    ignored = 0
    for event in events:
        verdict = rules.classify(event)
        if verdict.ignore:
            ignored += event.count
            continue
        tpl = fingerprint(event.message, event.service)
        if event.dedup_key:
            resolved = grouping.Resolved(dedup_fingerprint(event.dedup_key), tpl.template)
        else:
            resolved = overrides.resolve(tpl, event.message, event.service)
        key = resolved.key
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(key, resolved.template, verdict.title or tpl.title, verdict.severity, event)
            if not event.dedup_key:
                group.grouping = grouping.explanation(tpl, event.message, event.service, resolved)
                if not resolved.steps:
                    group.previous = previous_keys(event.message, event.service)
        elif verdict.severity.rank < group.severity.rank:
            group.severity = verdict.severity
        group.tags.update(verdict.tags)
        group.count += event.count
        for sample in (event.message, *event.samples):
            if len(group.samples) < 5 and sample not in group.samples:
                group.samples.append(sample[:2000])
    return list(groups.values()), ignored


def _new_incident(group: Group, catalog: Catalog) -> store.NewIncident:
    event = group.first
    affected = [event.service] if event.service else []
    affected += [s for s in catalog.mentioned(event.message) if s not in affected]
    details = {"message": event.message[:8000], "source": event.source}
    if event.dedup_key:
        details["dedup_key"] = event.dedup_key
    if event.occurred_at is not None:   # the first occurrence, as its producer stamped it (log evidence)
        details["occurred_at"] = event.occurred_at.isoformat()
    if event.details:
        details["details"] = event.details
    if group.grouping:
        details["grouping"] = group.grouping
    return store.NewIncident(
        fingerprint=group.fingerprint, template=group.template, title=group.title[:200],
        description=event.message[:8000], severity=group.severity, source=event.source,
        service=event.service, host=event.host, affected_services=affected, tags=sorted(group.tags),
        labels=event.labels, error_details=details, samples=group.samples, count=group.count,
        occurred_at=event.occurred_at,
    )


def _upsert_groups(conn: psycopg.Connection, groups: Sequence[Group], catalog: Catalog,
                   *, flap_window: float) -> list[Outcome]:
    """Upsert each group in fingerprint order (so racing workers never deadlock) and count it in the pattern."""
    outcomes = []
    _keep_open_incidents_whole(conn, groups)
    for group in sorted(groups, key=lambda g: g.fingerprint):
        new = _new_incident(group, catalog)
        # What a new incident is owed goes with its upsert, by the id it gets if the upsert opens it.
        new_id, upserted = store.upsert_incident_later(conn, new)
        flapping = _link_flapping_later(conn, new_id, group.fingerprint, flap_window)
        not_held = history.fixes_that_did_not_hold_later(conn, group.fingerprint, new_id, group.first.occurred_at)
        result = upserted()
        reopened, reassess = None, False
        if result.created:
            reopened = flapping()
            what = "detected" + (f"; recurred after {reopened} was resolved (flapping)" if reopened else "")
            store.add_timeline(conn, result.incident_id, actor="ingest", what=what,
                               details={"count": group.count, "source": new.source})
            _fixes_did_not_hold(conn, result.incident_id, not_held())
        elif result.raised_from is not None:
            reassess = _severity_raised(conn, result.incident_id, result.raised_from, group.severity, new.source)
        conn.execute(
            """
            INSERT INTO error_patterns (fingerprint, template, title, occurrences, incidents)
            VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (fingerprint) DO UPDATE SET occurrences = error_patterns.occurrences + EXCLUDED.occurrences,
                incidents = error_patterns.incidents + EXCLUDED.incidents, last_seen = now()
            """,
            (group.fingerprint, group.template[:2000], new.title, group.count, int(result.created)),
        )
        outcomes.append(Outcome(result.incident_id, group.fingerprint, result.created, result.occurrences,
                                group.count, reopened, reassess=reassess))
    return outcomes


def _keep_open_incidents_whole(conn: psycopg.Connection, groups: Sequence[Group]) -> None:
    """A group whose key has no open incident joins the open incident of its key under an earlier
    grouping version, if there is one: a new version never splits an incident that is open."""
    moved = [g for g in groups if g.previous]
    if not moved:
        return
    open_now = grouping_store.open_incidents(
        conn, [g.fingerprint for g in moved] + [k for g in moved for k in g.previous.values()])
    for g in moved:
        if g.fingerprint in open_now:
            continue
        for version, key in sorted(g.previous.items(), reverse=True):
            if key in open_now:
                g.grouping = dict(g.grouping, key=key, version=version, computed_key=g.fingerprint,
                                  steps=[*g.grouping.get("steps", []),
                                         f"grouping version {GROUPING_VERSION} key {g.fingerprint} has no open "
                                         f"incident; its version {version} key {key} has one, which takes it"])
                g.fingerprint = key
                break


def _fixes_did_not_hold(conn: psycopg.Connection, incident_id: str, runs: list[dict[str, Any]]) -> None:
    """A recurrence soon after a validated fix: that fix did not hold. Say so on both (the runs, already
    corrected by history.fixes_that_did_not_hold)."""
    for run in runs:
        after = float(run["after_seconds"] or 0.0)
        details = {"runbook": run["runbook"], "attempt": run["attempt"], "fixed": run["incident_id"],
                   "recurrence": incident_id, "after_seconds": round(after, 1)}
        store.add_timeline(conn, run["incident_id"], actor="ingest", details=details,
                           what=f"fix did not hold: the error recurred {after:.0f} s after runbook {run['runbook']} "
                                f"was validated, as {incident_id}; the attempt now counts as failed")
        conn.execute("UPDATE incidents SET fix = fix || %s WHERE id = %s",
                     (Jsonb({"held": False, "recurred_by": incident_id, "recurred_after": round(after, 1)}),
                      run["incident_id"]))
        store.add_timeline(conn, incident_id, actor="ingest", details=details,
                           what=f"recurred {after:.0f} s after runbook {run['runbook']} fixed {run['incident_id']}: "
                                "that fix is counted as failed")


def _severity_raised(conn: psycopg.Connection, incident_id: str, was: Severity, now: Severity, source: str) -> bool:
    """A worse occurrence raised an open incident's severity: say so, and page again if people already have it.

    An escalated incident's run restarts at level 1, under the policy of the new severity, so a P1 that
    first arrived as a P5 pages like any P1. An incident already assessed is owed a re-assessment at the
    new severity (True: the caller hands it to the commander after the commit), which escalates it now if
    the rules escalate that severity; it carries the new severity into every later decision either way.
    """
    store.add_timeline(conn, incident_id, actor="ingest",
                       what=f"severity raised {was.value} -> {now.value} by a new occurrence (source {source})",
                       details={"from": was.value, "to": now.value, "source": source})
    status = conn.execute("SELECT status FROM incidents WHERE id = %s", (incident_id,)).fetchone()
    if status and status["status"] == Status.ESCALATED.value:
        open_run(conn, incident_id, reason=f"severity raised {was.value} -> {now.value}", stage=None)
    return bool(status) and Status(status["status"]) in REASSESSED_IN


def _link_flapping(conn: psycopg.Connection, incident_id: str, fp: str, window: float) -> str | None:
    return _link_flapping_later(conn, incident_id, fp, window)()


def _link_flapping_later(conn: psycopg.Connection, incident_id: str, fp: str,
                         window: float) -> Callable[[], str | None]:
    """Mark a new incident flapping when its fingerprint's last incident ended within the window (sent now;
    read: the id of that incident, or None)."""
    cur = conn.execute(
        """
        UPDATE incidents SET reopened_from = prev.id,
               tags = CASE WHEN incidents.tags ? 'flapping' THEN incidents.tags
                           ELSE incidents.tags || '["flapping"]'::jsonb END
        FROM (SELECT id FROM incidents WHERE fingerprint = %s AND status IN ('resolved', 'closed')
              AND coalesce(resolved_at, closed_at) > now() - make_interval(secs => %s)
              ORDER BY coalesce(resolved_at, closed_at) DESC LIMIT 1) AS prev   -- incidents_fingerprint_ended
        WHERE incidents.id = %s
        RETURNING prev.id
        """,
        (fp, window, incident_id),
    )
    return later(lambda: (lambda row: row["id"] if row else None)(cur.fetchone()))
