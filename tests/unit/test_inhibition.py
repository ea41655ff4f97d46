"""Inhibition rules: which open incident becomes the parent of which."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from erdu_tasks.catalog import Catalog, Service
from erdu_tasks.errors import ConfigError
from erdu_tasks.escalation.inhibition import (
    DEFAULT_RULES,
    InhibitRule,
    find_parent,
    inhibits,
    parent_services,
    rules_from_section,
)
from erdu_tasks.model import Incident, Severity, Status

T0 = datetime(2025, 3, 3, 12, 0, tzinfo=timezone.utc)
CATALOG = Catalog([
    Service(name="db"),
    Service(name="api", depends_on=["db"]),
    Service(name="web", depends_on=["api"]),
    Service(name="billing"),
])


def incident(ident: str, service: str, severity: str, *, minutes: int = 0, status=Status.ESCALATED,
             parent: str | None = None) -> Incident:
    return Incident(id=ident, fingerprint=f"fp-{ident}", title=f"{service} broken", description="",
                    severity=Severity(severity), status=status, source="test", service=service,
                    affected_services=[service], created_at=T0 + timedelta(minutes=minutes), parent_id=parent)


DB_P1 = incident("db-p1", "db", "P1")


@pytest.mark.parametrize(("child", "parent"), [
    (incident("api", "api", "P2"), "db-p1"),
    (incident("web", "web", "P3"), "db-p1"),       # transitive dependants
    (incident("api-p1", "api", "P1"), "db-p1"),    # the child's own severity does not matter
    (incident("billing", "billing", "P2"), None),  # does not depend on db
    (incident("db-other", "db", "P2"), None),      # the same service is not a dependant
])
def test_an_open_p1_inhibits_the_services_that_depend_on_it(child, parent):
    found = find_parent(child, [DB_P1], DEFAULT_RULES, CATALOG.dependants)
    assert (found[0].id if found else None) == parent


def test_only_open_top_level_p1_incidents_are_parents():
    child = incident("api", "api", "P2")
    assert find_parent(child, [incident("db-p2", "db", "P2")], DEFAULT_RULES, CATALOG.dependants) is None
    closed = incident("db-closed", "db", "P1", status=Status.CLOSED)
    assert find_parent(child, [closed], DEFAULT_RULES, CATALOG.dependants) is None
    nested = incident("db-nested", "db", "P1", parent="x")
    assert find_parent(child, [nested], DEFAULT_RULES, CATALOG.dependants) is None
    assert find_parent(DB_P1, [DB_P1], DEFAULT_RULES, CATALOG.dependants) is None


def test_the_oldest_parent_wins():
    newer = incident("db-newer", "db", "P1", minutes=5)
    found = find_parent(incident("api", "api", "P2"), [newer, DB_P1], DEFAULT_RULES, CATALOG.dependants)
    assert found is not None and found[0].id == "db-p1"


def test_rules_can_name_sources_and_targets():
    rules = rules_from_section({"inhibit": [{"source_severities": ["P1", "P2"], "source_services": ["billing"],
                                             "targets": ["web"]}]})
    billing = incident("billing-p2", "billing", "P2")
    assert find_parent(incident("web", "web", "P3"), [billing, DB_P1], rules, CATALOG.dependants)[0].id == "billing-p2"
    assert find_parent(incident("api", "api", "P3"), [billing, DB_P1], rules, CATALOG.dependants) is None


def test_rules_default_off_and_errors():
    assert rules_from_section({}) == DEFAULT_RULES
    assert rules_from_section({"inhibit": []}) == ()
    with pytest.raises(ConfigError, match=r"escalation\.inhibit\.0\.targets"):
        rules_from_section({"inhibit": [{"targets": "everything"}]})
    with pytest.raises(ConfigError, match=r"escalation\.inhibit: Input should be a valid list"):
        rules_from_section({"inhibit": {"source_severities": ["P1"]}})
    assert "depend on it" in InhibitRule().describe()


def test_the_catalog_knows_what_a_service_depends_on_transitively():
    assert CATALOG.dependencies("web") == ["api", "db"]
    assert CATALOG.dependencies("db") == [] and CATALOG.dependencies("unknown") == []
    assert set(CATALOG.dependants("db")) == {"api", "web"}


@pytest.mark.parametrize(("rules", "service", "expected"), [
    (DEFAULT_RULES, "web", {"api", "db"}),
    (DEFAULT_RULES, "db", set()),                                           # depends on nothing: read nothing
    ((InhibitRule(source_services=["db"]),), "web", {"db"}),
    ((InhibitRule(targets=["billing"]),), "web", set()),                    # not a target
    ((InhibitRule(targets=["billing"]),), "billing", None),                 # a target, parents of any service
    ((InhibitRule(targets=["billing"], source_services=["db"]),), "billing", {"db"}),
])
def test_only_the_services_that_could_inhibit_an_incident_are_read(rules, service, expected):
    assert parent_services(rules, incident("c", service, "P3"), CATALOG.dependencies) == expected


def test_every_parent_a_rule_finds_is_of_a_service_the_candidates_query_reads():
    services = ["db", "api", "web", "billing"]
    rule_sets = [DEFAULT_RULES, (InhibitRule(source_services=["api"]),), (InhibitRule(targets=["web", "db"]),)]
    for rules in rule_sets:
        for child_service in services:
            child = incident("c", child_service, "P3")
            allowed = parent_services(rules, child, CATALOG.dependencies)
            for parent_service in services:
                parent = incident("p", parent_service, "P1")
                if any(inhibits(rule, parent, child, CATALOG.dependants) for rule in rules):
                    assert allowed is None or parent_service in allowed, (rules, child_service, parent_service)
