"""Messages a dead worker held: handed back to their queues within a stage deadline, not the visibility timeout.

kombu's Redis transport keeps every delivered, unacknowledged message in the `unacked` hash (with its
delivery time in `unacked_index`) and hands it back only when the visibility timeout passes: 300 s, which
must outlast the slowest fix, or a running fix would be handed to a second fixer. Work whose incident
exists is re-driven earlier by the reconciler (Postgres knows it is owed), but an `erdu.ingest` message a
dead host took has no incident yet: only the broker knows of it.

So the reconciler also asks the live workers which tasks they hold (the read-only `active`, `reserved`
and `scheduled` control commands) and restores every unacknowledged message older than the stage
deadline that none of them holds, with kombu's own restore (under kombu's restore mutex, in a transaction
watching the hash, so an acknowledgement racing it wins). A live worker that does not answer in time has
its messages delivered a second time: every task survives that (ingest keeps broker message ids, stages
are compare-and-set, actions claim their keys). Delete this if kombu learns to tie unacked messages to
the consumer that holds them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from kombu.transport.redis import Mutex, MutexHeld

REPLY_SECONDS = 1.0
"""How long each control command waits for the workers' replies."""


def held_task_ids(replies: Iterable[Mapping[str, Any] | None]) -> set[str]:
    """Task ids in `active`, `reserved` and `scheduled` replies ({node: [request | {"request": ...}]})."""
    ids: set[str] = set()
    for reply in replies:
        for entries in (reply or {}).values():
            for entry in entries or ():
                request = entry.get("request", entry) if isinstance(entry, dict) else None
                if isinstance(request, dict) and isinstance(request.get("id"), str):
                    ids.add(request["id"])
    return ids


def _task_id(raw: bytes | str) -> str | None:
    try:
        message = json.loads(raw)[0]
        return message.get("headers", {}).get("id") or message.get("properties", {}).get("correlation_id")
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None


def restore_orphans(app: Any, *, older_than: float, reply_seconds: float = REPLY_SECONDS) -> int:
    """Hand back unacknowledged messages delivered over `older_than` seconds ago that no live worker holds."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        qos = channel.qos
        with channel.conn_or_acquire() as client:
            old = client.zrangebyscore(qos.unacked_index_key, 0, time.time() - older_than)
            if not old:
                return 0
            inspect = app.control.inspect(timeout=reply_seconds)
            held = held_task_ids([inspect.active(), inspect.reserved(), inspect.scheduled()])
            restored = 0
            try:
                with Mutex(client, qos.unacked_mutex_key, qos.unacked_mutex_expire):
                    for tag in old:
                        raw = client.hget(qos.unacked_key, tag)
                        if raw is None or _task_id(raw) in held:
                            continue
                        qos.restore_by_tag(tag.decode() if isinstance(tag, bytes) else tag, client=client)
                        restored += 1
            except MutexHeld:   # kombu's own restore runs now; the next pass looks again
                pass
            return restored
