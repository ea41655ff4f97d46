"""Structured logs: one JSON object per line, with the incident id on every line about an incident."""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

import structlog

_INCIDENT_ID = re.compile(r"INC-\d{14}-[0-9a-f]{8}")
_FORMATS = ("json", "console")
MAX_FIELD_CHARS = 4096
"""A log field longer than this is cut: a 20 MB event must not become a 20 MB log line in every worker."""


_SECRETS: set[str] = set()
MIN_SECRET_CHARS = 4
"""Shorter values are not redacted (they would blank out ordinary words); settings secrets are longer."""


def register_secrets(values: Any) -> None:
    """Values no log line may show (settings tokens, keys, passwords): each is replaced by `***`."""
    _SECRETS.update(v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_CHARS)


def redact(text: str) -> str:
    """text with every registered secret replaced by `***`."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _redact_secrets(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Replace every registered secret in every field (the message, arguments, an exception's text)."""
    if not _SECRETS:
        return event_dict
    for key, value in list(event_dict.items()):
        if isinstance(value, str):
            event_dict[key] = redact(value)
        elif isinstance(value, (dict, list, tuple)):
            text = repr(value)
            if redact(text) != text:
                event_dict[key] = redact(text)
    return event_dict


def _cap_fields(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Cut every long text field (the message, task arguments, an exception's text) to MAX_FIELD_CHARS."""
    for key, value in list(event_dict.items()):
        if not isinstance(value, str):
            if isinstance(value, (dict, list, tuple)):
                value = repr(value)
                if len(value) <= MAX_FIELD_CHARS:
                    continue
            else:
                continue
        if len(value) > MAX_FIELD_CHARS:
            event_dict[key] = f"{value[:MAX_FIELD_CHARS]}… [{len(value) - MAX_FIELD_CHARS} more characters cut]"
    return event_dict


def _incident_id_from_text(logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A line that names an incident (in its text or its task's arguments) but has no incident_id gets one."""
    if "incident_id" not in event_dict:
        data = event_dict.get("data")
        args = data.get("args", "") if isinstance(data, dict) else ""
        match = _INCIDENT_ID.search(str(args)) or _INCIDENT_ID.search(str(event_dict.get("event", "")))
        if match:
            event_dict["incident_id"] = match.group(0)
    return event_dict


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        _incident_id_from_text,
    ]


def configure(level: int | str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    """Send stdlib and structlog records alike through one handler: JSON lines (or readable console lines)."""
    if fmt not in _FORMATS:
        raise ValueError(f"log format must be one of {', '.join(_FORMATS)}, not {fmt!r}")
    shared = _shared_processors()
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared,
                    structlog.stdlib.PositionalArgumentsFormatter(),
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, _redact_secrets, _cap_fields, renderer],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_level(level))


def _level(level: int | str | None) -> int:
    if isinstance(level, int) and level > 0:
        return level
    if isinstance(level, str) and level.strip():
        value = logging.getLevelName(level.strip().upper())
        if isinstance(value, int):
            return value
    return logging.INFO


def incident_id_of(args: Any) -> str | None:
    """The incident id a task is about: its first positional argument, when it is one."""
    if args and isinstance(args[0], str) and _INCIDENT_ID.fullmatch(args[0]):
        return args[0]
    return None


def _on_setup_logging(loglevel=None, logfile=None, format=None, colorize=None, **kwargs) -> None:  # noqa: A002
    # The process boundary: the only place the log format is read from the environment.
    fmt = os.environ.get("ERDU_LOG_FORMAT", "json").strip().lower() or "json"
    configure(loglevel or "INFO", fmt if fmt in _FORMATS else "json")


def _on_task_prerun(task_id=None, task=None, args=None, **kwargs) -> None:
    structlog.contextvars.clear_contextvars()
    bound: dict[str, Any] = {"task": getattr(task, "name", None), "task_id": task_id}
    incident_id = incident_id_of(args)
    if incident_id:
        bound["incident_id"] = incident_id
    structlog.contextvars.bind_contextvars(**bound)


def _on_task_postrun(**kwargs) -> None:
    structlog.contextvars.clear_contextvars()


_installed = False


def install_celery_hooks() -> None:
    """Let ERDU configure logging in workers and beat, and bind the task and incident id around each task."""
    global _installed
    if _installed:
        return
    from celery import signals

    signals.setup_logging.connect(_on_setup_logging, weak=False)
    signals.task_prerun.connect(_on_task_prerun, weak=False)
    signals.task_postrun.connect(_on_task_postrun, weak=False)
    _installed = True
