"""Producers' side in Python: a client for the HTTP API and the Celery queue, and a logging handler that never blocks.

The public names are here: `from erdu_tasks.client import Client, ClientError, report_event, ErduHandler`.

May import: ingest (to validate events before sending), store.preflight, names, errors; nothing that runs
the pipeline.
"""

from erdu_tasks.client.logging_handler import ErduHandler
from erdu_tasks.client.producer import Client, ClientError, make_event, report_event

__all__ = ["Client", "ClientError", "ErduHandler", "make_event", "report_event"]
