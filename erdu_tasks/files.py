"""Files are opened only when they are what they claim: a regular file, under the directory it was found in.

A log directory is writable by the services that log there, so its contents are event text too: a
symlink may point at /etc/shadow, a FIFO would block the reader for ever, and a NUL byte cannot be
stored by Postgres. Everything that reads a log file (the tailer, the diagnostician's log window)
opens it here.
"""

from __future__ import annotations

import errno
import glob
import os
import stat
from typing import BinaryIO

_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class UnsafeFile(OSError):
    """The path is not a regular file, is a symbolic link, or leads outside the directory it must stay in."""


def inside(path: str, root: str) -> bool:
    """True if the real path of `path` is `root` or lies under it (both resolved, so no link leads out)."""
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def root_of(pattern: str) -> str:
    """The directory a path or glob pattern stays in: the part before the first wildcard, up to a separator."""
    parts = pattern.split(os.sep)
    for i, part in enumerate(parts):
        if glob.has_magic(part):
            return os.sep.join(parts[:i]) or os.sep
    return os.path.dirname(pattern) or "."


def open_regular(path: str, *, within: str | None = None) -> BinaryIO:
    """Open for reading, without blocking and without following a final symlink, only a regular file.

    With `within`, the file's real path must also lie under that directory. Raises UnsafeFile otherwise
    (an OSError, so callers that handle unreadable files handle this one too).
    """
    if within is not None:
        if not inside(path, within):
            raise UnsafeFile(errno.EPERM, f"leads outside {within} (a symbolic link?); not read", path)
        path = os.path.realpath(path)
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(errno.ELOOP, "is a symbolic link; not read", path) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeFile(errno.EINVAL, "not a regular file (a FIFO, device or directory); not read", path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def storable(text: str) -> str:
    """Text Postgres can store: NUL bytes dropped (text and jsonb refuse them)."""
    return text.replace("\x00", "") if "\x00" in text else text
