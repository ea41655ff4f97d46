"""JSON log lines carry the incident id: bound around a task, or found in the line's text or task arguments."""

import io
import json
import logging

import pytest
import structlog

from erdu_tasks.celery_ext import logs

INC = "INC-20240101120000-1a2b3c4d"


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_a_task_about_an_incident_logs_its_id_on_every_line_stdlib_and_structlog():
    stream = io.StringIO()
    logs.configure("INFO", "json", stream)
    task = type("T", (), {"name": "erdu.fix"})()
    logs._on_task_prerun(task_id="t-1", task=task, args=(INC,))
    structlog.get_logger("erdu.test").info("restarting", service="web")
    logging.getLogger("celery.app.trace").info("Task %s succeeded", "erdu.fix")
    logs._on_task_postrun()
    structlog.get_logger("erdu.test").info("idle")
    first, second, third = lines(stream)
    assert first["incident_id"] == INC and first["task"] == "erdu.fix" and first["service"] == "web"
    assert second["incident_id"] == INC and second["event"] == "Task erdu.fix succeeded"
    assert "incident_id" not in third and third["level"] == "info" and "ts" in third


def test_a_line_naming_an_incident_in_its_text_or_task_arguments_gets_the_id():
    event = logs._incident_id_from_text(None, "info", {"event": f"escalated {INC} to people"})
    assert event["incident_id"] == INC
    received = {"event": "Task erdu.assess[abc] received", "data": {"args": f"('{INC}',)"}}
    assert logs._incident_id_from_text(None, "info", received)["incident_id"] == INC
    assert "incident_id" not in logs._incident_id_from_text(None, "info", {"event": "nothing here"})


def test_only_incident_ids_count_as_a_tasks_incident():
    assert logs.incident_id_of((INC, "x")) == INC
    assert logs.incident_id_of(({"message": INC},)) is None
    assert logs.incident_id_of(()) is None


def test_a_huge_message_or_argument_is_cut_in_the_log_line():
    stream = io.StringIO()
    logs.configure("INFO", "json", stream)
    huge = "x" * 20_000_000
    structlog.get_logger("erdu.test").error("ingest failed", message=huge, args=[huge])
    logging.getLogger("celery.worker.strategy").info("Task erdu.ingest[1] received: %s", huge)
    assert len(stream.getvalue()) < 40_000
    first, second = lines(stream)
    assert first["message"].startswith("xxx") and "more characters cut" in first["message"]
    assert "more characters cut" in first["args"] and "more characters cut" in second["event"]
    assert first["event"] == "ingest failed"
