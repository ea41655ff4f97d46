"""Log directories are event text too: symlinks out, FIFOs and NUL bytes are refused or cleaned, never followed."""

from __future__ import annotations

import os
import threading

import pytest

from erdu_tasks import files
from erdu_tasks.monitors.config import load_monitors
from erdu_tasks.roles.logwindow import EvidenceConfig, read_window
from tests.conftest import incident_rows
from tests.integration.test_monitors import scan, tail_env  # noqa: F401  (the tailer's fixture)

SECRET = "2024-05-01T10:00:00 ERROR root password is hunter2"


@pytest.fixture()
def outside(tmp_path):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    secret = folder / "secret.log"
    secret.write_text(SECRET + "\n")
    return secret


def texts(url: str) -> str:
    return " ".join(f"{r['title']} {r['description']} {r['error_details']}"
                    for r in incident_rows(url, "SELECT title, description, error_details FROM incidents"))


def test_a_symlink_in_a_watched_glob_that_leads_out_is_not_followed(tail_env, outside):
    logs, _, deps, _, url = tail_env
    cfg = load_monitors({"logs": {"files": [{"path": str(logs / "*.log"), "service": "orders",
                                             "from_start": True}]}}).logs
    (logs / "evil.log").symlink_to(outside)
    (logs / "real.log").write_text("2024-05-01T10:00:00 ERROR checkout failed for order 7\n")
    scan(cfg, deps)
    assert "hunter2" not in texts(url)
    assert "checkout failed" in texts(url)


def test_an_explicit_path_replaced_by_a_symlink_out_is_reported_unreadable_not_read(tail_env, outside):
    logs, config, deps, _, url = tail_env
    cfg = config()
    (logs / "app.log").symlink_to(outside)
    scan(cfg, deps)
    assert "hunter2" not in texts(url)


def test_a_nul_byte_in_a_tailed_line_is_dropped_and_the_line_still_counts(tail_env):
    logs, config, deps, _, url = tail_env
    cfg = config()
    (logs / "app.log").write_bytes(b"2024-05-01T10:00:00 ERROR payment\x00 gateway refused order 9\n")
    scan(cfg, deps)
    found = incident_rows(url, "SELECT title, occurrences FROM incidents")
    assert len(found) == 1 and found[0]["occurrences"] == 1 and "\x00" not in found[0]["title"]


def _window(path: str, root: str):
    return read_window(path, message="ERROR", at=None, cfg=EvidenceConfig(), roots=[root])


def test_the_log_window_refuses_a_fifo_instead_of_blocking(tmp_path):
    fifo = tmp_path / "app.log"
    os.mkfifo(fifo)
    result: list = []
    reader = threading.Thread(target=lambda: result.append(_window(str(fifo), str(tmp_path))), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "reading a FIFO blocked the diagnostician"
    assert result[0].error and "regular file" in result[0].error


def test_the_log_window_does_not_follow_a_symlink_out_of_its_root(tmp_path, outside):
    root = tmp_path / "logs"
    root.mkdir()
    (root / "app.log").symlink_to(outside)
    window = _window(str(root / "app.log"), str(root))
    assert window.error and not window.lines


def test_the_log_window_drops_nul_bytes(tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(b"2024-05-01T10:00:00 INFO ok\n2024-05-01T10:00:01 ERROR bad\x00 thing\n")
    window = _window(str(log), str(tmp_path))
    assert window.lines and all("\x00" not in line.text for line in window.lines)


def test_open_regular_refuses_links_fifos_directories_and_paths_outside(tmp_path, outside):
    (tmp_path / "link.log").symlink_to(outside)
    os.mkfifo(tmp_path / "pipe.log")
    (tmp_path / "dir.log").mkdir()
    for name in ("link.log", "pipe.log", "dir.log"):
        with pytest.raises(files.UnsafeFile):
            files.open_regular(str(tmp_path / name))
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "link.log").symlink_to(outside)
    with pytest.raises(files.UnsafeFile):
        files.open_regular(str(logs / "link.log"), within=str(logs))
    with files.open_regular(str(outside), within=str(outside.parent)) as handle:
        assert handle.read().decode().strip() == SECRET
    assert files.root_of("/var/log/*/app.log") == "/var/log"
    assert files.root_of("/var/log/billing/*.log") == "/var/log/billing"
    assert files.root_of("/var/log/app.log") == "/var/log"
