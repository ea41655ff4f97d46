"""The four roles: plain functions of (incident, context) -> decision."""
