"""Inhibition: while a severe incident of a service is open, incidents of the services that
depend on it are linked to it as children and are not escalated on their own.

Rules live in the `escalation` settings section under `inhibit`; the default is one rule,
"an open P1 inhibits incidents of every service that depends on its service", with the
dependencies read from the service catalog (`depends_on`, transitively):

    escalation:
      inhibit:
        - source_severities: [P1]      # the parent's severities (default [P1])
          source_services: [orders-db] # optional: only parents of these services
          targets: dependants          # or a list of service names
      # inhibit: []                    # switches inhibition off
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import psycopg
from pydantic import TypeAdapter, ValidationError

from erdu_tasks.store import incidents as store
from erdu_tasks.store.db import later
from erdu_tasks.errors import config_error
from erdu_tasks.model import OPEN_STATUSES, Incident
from erdu_tasks.settings.escalation import DEFAULT_INHIBIT_RULES, EscalationConfig, InhibitRule

DependantsOf = Callable[[str], Iterable[str]]


DEFAULT_RULES = DEFAULT_INHIBIT_RULES
_RULES = TypeAdapter(list[InhibitRule] | None)


def rules_from_section(section: EscalationConfig | Mapping[str, Any] | None) -> tuple[InhibitRule, ...]:
    """The inhibit rules of the escalation section (the default rule when the key is absent)."""
    if isinstance(section, EscalationConfig):
        return section.inhibit_rules
    try:
        rules = _RULES.validate_python((section or {}).get("inhibit"))
    except ValidationError as exc:
        raise config_error(exc, "escalation settings", prefix=("escalation", "inhibit")) from None
    return DEFAULT_RULES if rules is None else tuple(rules)


def services_of(incident: Incident) -> list[str]:
    """The incident's service and affected services, without repeats."""
    return [s for s in dict.fromkeys([incident.service or "", *incident.affected_services]) if s]


def inhibits(rule: InhibitRule, parent: Incident, child: Incident, dependants_of: DependantsOf) -> bool:
    """True when the rule makes parent inhibit child."""
    if parent.id == child.id or parent.severity not in rule.source_severities:
        return False
    parent_services = services_of(parent)
    if rule.source_services is not None and not set(parent_services) & set(rule.source_services):
        return False
    if rule.targets == "dependants":
        targets = {d for s in parent_services for d in dependants_of(s)}
    else:
        targets = set(rule.targets)
    targets -= set(parent_services)
    return bool(set(services_of(child)) & targets)


def find_parent(
    child: Incident,
    candidates: Sequence[Incident],
    rules: Sequence[InhibitRule],
    dependants_of: DependantsOf,
) -> tuple[Incident, InhibitRule] | None:
    """The oldest open, top-level candidate that inhibits the child, with the rule that says so."""
    ordered = sorted(candidates, key=lambda i: (i.created_at is None, i.created_at, i.id))
    for parent in ordered:
        if not parent.is_open or parent.parent_id is not None or parent.id == child.id:
            continue
        for rule in rules:
            if inhibits(rule, parent, child, dependants_of):
                return parent, rule
    return None


# --------------------------------------------------------------------------- storage


def parent_services(rules: Sequence[InhibitRule], child: Incident,
                    dependencies_of: DependantsOf | None) -> set[str] | None:
    """The services an inhibiting parent of child could have under these rules (None: any service).

    A "dependants" rule makes a parent of the services the child's services depend on, directly or
    transitively (the catalog's depends_on); a rule with a target list only applies to a child of one of
    its targets, and then to parents of its source_services (or of any service). An empty set: nothing can
    inhibit the child, and nothing needs to be read.
    """
    child_services = set(services_of(child))
    out: set[str] = set()
    for rule in rules:
        if rule.targets == "dependants":
            if dependencies_of is None:
                return None
            possible = {d for s in child_services for d in dependencies_of(s)}
        elif not child_services & set(rule.targets):
            continue
        elif rule.source_services is None:
            return None
        else:
            possible = set(rule.source_services)
        if rule.source_services is not None:
            possible &= set(rule.source_services)
        out |= possible
    return out


def candidates(conn: psycopg.Connection, rules: Sequence[InhibitRule], *, limit: int = 500,
               child: Incident | None = None, dependencies_of: DependantsOf | None = None) -> list[Incident]:
    """Open top-level incidents whose severity could make them a parent (of `child`, when given).

    With a child, only the open incidents of the services that could inhibit it are read, and none at
    all when no service could (no dependencies in the catalog). The rows carry only what the rules look
    at (id, severity, status, services, created_at, parent_id); a parent that is linked is re-read in full.
    """
    severities = sorted({s.value for r in rules for s in r.source_severities})
    if not severities:
        return []
    services = None if child is None else parent_services(rules, child, dependencies_of)
    found = store.open_candidates(conn, severities=severities,
                                  services=None if services is None else sorted(services), limit=limit)
    return [i for i in found if child is None or i.id != child.id]


def open_parent(conn: psycopg.Connection, incident: Incident) -> Incident | None:
    """The incident's linked parent, when it is still open."""
    if not incident.parent_id:
        return None
    parent = store.get_incident(conn, incident.parent_id)
    return parent if parent is not None and parent.is_open else None


def link(conn: psycopg.Connection, child: Incident, parent: Incident, rule: InhibitRule, *,
         worker: str | None) -> bool:
    """Make child a child of parent (both timelines say so); False when it already was."""
    if child.parent_id == parent.id:
        return False
    store.update_fields(conn, child.id, {"parent_id": parent.id})
    child.parent_id = parent.id
    store.add_timeline(conn, child.id, actor="escalation", worker=worker,
                       what=f"linked to parent {parent.id} ({parent.severity.value} {parent.service or ''}): "
                            "not escalated on its own while the parent is open",
                       details={"parent_id": parent.id, "rule": rule.describe()})
    store.add_timeline(conn, parent.id, actor="escalation", worker=worker,
                       what=f"child {child.id} linked ({child.severity.value} {child.service or '-'}: "
                            f"{child.title[:60]})",
                       details={"child_id": child.id, "rule": rule.describe()})
    return True


def adopt_children(conn: psycopg.Connection, parent: Incident, rules: Sequence[InhibitRule],
                   dependants_of: DependantsOf, *, worker: str | None, limit: int = 500) -> list[str]:
    """Link the open top-level incidents the parent inhibits as its children, however long they have been
    open: correlation does not depend on which incident came first. Returns the ids linked now."""
    if not parent.is_open or parent.parent_id is not None or not rules:
        return []
    if not any(parent.severity in rule.source_severities for rule in rules):
        return []
    found = store.list_incidents(conn, statuses=[s.value for s in OPEN_STATUSES], limit=limit)
    linked = []
    for child in sorted(found, key=lambda i: (i.created_at is None, i.created_at, i.id)):
        if child.id == parent.id or child.parent_id is not None:
            continue
        if conn.execute("SELECT 1 FROM incidents WHERE parent_id = %s LIMIT 1", (child.id,)).fetchone():
            continue   # a parent of its own stays top-level: one level of children
        rule = next((r for r in rules if inhibits(r, parent, child, dependants_of)), None)
        if rule is not None and link(conn, child, parent, rule, worker=worker):
            linked.append(child.id)
    return linked


def children_of(conn: psycopg.Connection, parent_id: str) -> list[dict[str, Any]]:
    """The parent's children: id, status, severity, service, title."""
    return children_of_later(conn, parent_id)()


def children_of_later(conn: psycopg.Connection, parent_id: str) -> Callable[[], list[dict[str, Any]]]:
    """children_of, sent now and read when called (see store.db.later)."""
    cur = conn.execute(
        "SELECT id, status, severity, service, title FROM incidents WHERE parent_id = %s ORDER BY created_at, id",
        (parent_id,),
    )
    return later(cur.fetchall)
