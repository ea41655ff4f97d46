"""ERDU: a self-healing incident-response service on Celery, Redis and Postgres."""

__version__ = "0.1.0"
