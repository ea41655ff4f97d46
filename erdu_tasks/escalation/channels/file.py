"""File channel: one JSON file per notification in an alerts directory (the seed's behaviour).

File names are built from the incident id, the level and a counter only, never from event
text: `INC-20250101120000-ab12cd34-L2-0001.json`, `…-resolved-0001.json`, `DIGEST-…-digest-0001.json`.
Each file appears atomically (written to a temporary name, then hard-linked into place), so a
reader never sees half a file and two writers never overwrite each other.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from pathlib import Path

from erdu_tasks.escalation.channels.base import BaseChannel, DeliveryResult, Notification, NotificationKind
from erdu_tasks.settings.escalation import FileSettings

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_MAX_COUNTER = 100_000
_PERMANENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG}


def file_stem(notification: Notification) -> str:
    """The id-and-level part of a file name; a counter is appended to make it unique."""
    ident = notification.incident_id
    if not _SAFE_ID.fullmatch(ident):
        ident = "incident-" + hashlib.sha256(ident.encode()).hexdigest()[:16]
    if notification.kind is NotificationKind.RESOLVE:
        return f"{ident}-resolved"
    if notification.kind is NotificationKind.DIGEST:
        return f"{ident}-digest"
    if notification.kind is NotificationKind.REMINDER:
        return f"{ident}-reminder"
    if notification.kind is NotificationKind.FYI:
        return f"{ident}-fyi"
    return f"{ident}-L{int(notification.level)}"


class FileChannel(BaseChannel):
    """Writes each notification as a JSON file."""

    def __init__(self, name: str, settings: FileSettings) -> None:
        super().__init__(name, settings)
        self.dir = Path(settings.dir or "var/alerts")
        self.mode = settings.file_mode

    def _deliver(self, notification: Notification) -> DeliveryResult:
        try:
            path = self._write(notification)
        except OSError as exc:
            permanent = exc.errno in _PERMANENT_ERRNOS
            return DeliveryResult.failed(self.name, f"cannot write in {self.dir}: {exc}", permanent=permanent)
        return DeliveryResult.sent(self.name, str(path))

    def _write(self, notification: Notification) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        body = notification.to_json_bytes() + b"\n"
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, self.mode)
            stem = file_stem(notification)
            for counter in range(1, _MAX_COUNTER):
                target = self.dir / f"{stem}-{counter:04d}.json"
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    continue
                return target
            raise OSError(errno.EEXIST, f"more than {_MAX_COUNTER} files for {stem}")
        finally:
            os.unlink(tmp)
