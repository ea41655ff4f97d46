"""Remote control is for looking, not for steering: a worker answers read-only commands and refuses the rest.

Anyone who can publish to the broker can broadcast a control command, and Celery's only switch
(`worker_enable_remote_control`) is all or nothing: off, and ERDU's own Celery health monitor (ping) and
Flower's dashboard (stats, active queues, registered, active, reserved, scheduled) go blind; on, and any
producer can shut every worker down, restart its pool, change rate limits, revoke tasks or read the
configuration. So the worker keeps remote control on and answers only the commands below; any other
is logged and dropped without a reply. Delete this once Celery can allowlist control commands.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery.worker import pidbox

log = structlog.get_logger("erdu.remote_control")

READ_ONLY_COMMANDS = frozenset({
    "ping", "hello", "heartbeat", "clock", "report", "stats", "active_queues", "registered", "active",
    "reserved", "scheduled", "query_task", "dump_tasks",
})
"""What any broker client may ask a worker: nothing here changes the worker or reveals its settings."""

_original = pidbox.Pidbox.on_message


def _on_message(self: pidbox.Pidbox, body: Any, message: Any) -> Any:
    method = body.get("method") if isinstance(body, dict) else None
    if method not in READ_ONLY_COMMANDS:
        log.warning("remote control command refused", command=str(method)[:64],
                    allowed="read-only commands only")
        self._forward_clock()
        return None
    return _original(self, body, message)


def install() -> None:
    """Make this process's workers answer read-only control commands only (gevent/eventlet pidboxes too)."""
    pidbox.Pidbox.on_message = _on_message
