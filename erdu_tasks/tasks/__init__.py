"""Celery tasks: thin wrappers that load, call a role, store and hand on."""
