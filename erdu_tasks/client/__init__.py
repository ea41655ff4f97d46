"""Producers' side in Python: a client for the HTTP API and the Celery queue, and a logging handler that never blocks.

May import: names, errors and the standard library; nothing of the server."""
