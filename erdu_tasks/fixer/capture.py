"""Capture before repair: what a service looked like just before an action destroyed its state.

Before the first step of a runbook whose action destroys state (`DESTROYS_STATE = True` in the action's
module: restart, scale), the fixer calls `capture_service`. It records, bounded in time and size:

- the service's last log lines (its catalog `log_file`, else the files the log monitor tails for it);
- its process state through psutil: status, CPU, memory, threads, open files and connections;
- for a Python process, a thread dump taken with `py-spy dump --pid N`.

The PID comes from configuration only, never from event text: the catalog entry's `pid_file`, its
`process` pattern (RE2, searched in each process's command line), its `supervisor` program
(asked of supervisord over the unix socket its config names, else `supervisorctl pid`), its `systemd` unit (`systemctl show -p MainPID`), or the restart step's own
supervisor/systemd target. Whatever cannot be captured (no PID, py-spy missing or not permitted, a
timeout) is recorded with the reason, and the repair goes on: the whole capture is bounded by
`CAPTURE_BUDGET` seconds.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

from erdu_tasks.settings.common import compile_pattern

CAPTURE_BUDGET = 5.0
"""Seconds the whole capture may take; every external command gets what is left of it (at most 3 s)."""

MAX_LOG_LINES = 30
MAX_LOG_BYTES = 16 * 1024
MAX_DUMP_CHARS = 16 * 1024
MAX_LISTED = 20
"""Open files and connections listed (the counts are always complete)."""


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n…[{len(text) - limit} more chars cut]"


class _Clock:
    def __init__(self, budget: float) -> None:
        self.deadline = time.monotonic() + budget

    def left(self, cap: float = 3.0) -> float:
        return max(0.0, min(cap, self.deadline - time.monotonic()))


# --------------------------------------------------------------------------- finding the process


def _run(argv: list[str], timeout: float) -> tuple[int | None, str, str]:
    """Run a short read-only command; (exit code or None when it could not run, stdout, why not)."""
    if timeout <= 0:
        return None, "", "no time left in the capture budget"
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,  # noqa: S603
                              check=False)
    except FileNotFoundError:
        return None, "", f"{argv[0]} not found"
    except subprocess.TimeoutExpired:
        return None, "", f"{argv[0]} timed out after {timeout:.1f} s"
    except OSError as exc:
        return None, "", f"cannot run {argv[0]}: {exc.strerror or exc}"
    err = done.stderr.decode("utf-8", "replace").strip().splitlines()
    # A Rust tool (py-spy) ends its stderr with a backtrace: its "Error:" line and causes say what failed.
    head = next((i for i, line in enumerate(err) if line.startswith("Error:")), None)
    if head is not None:
        tail = next((i for i in range(head + 1, len(err)) if err[i].startswith("Stack backtrace")), len(err))
        return done.returncode, done.stdout.decode("utf-8", "replace"), " ".join(
            line.strip() for line in err[head:tail] if line.strip())[:300]
    return done.returncode, done.stdout.decode("utf-8", "replace"), err[-1][:300] if err else ""


def _pid_from_file(path: str) -> tuple[int | None, str]:
    try:
        text = open(path, encoding="utf-8").read(64).strip()   # noqa: SIM115 - a tiny read
    except OSError as exc:
        return None, f"pid file {path}: {exc.strerror or exc}"
    if not text.isdigit():
        return None, f"pid file {path} holds no pid"
    return int(text), ""


def _pid_from_pattern(pattern: str) -> tuple[int | None, str]:
    import psutil   # where a process is looked at: a worker that captures or checks none never imports it

    compiled = compile_pattern(pattern)
    me = os.getpid()
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if proc.info["pid"] != me and cmdline and compiled.search(cmdline):
            found.append((proc.info.get("create_time") or 0.0, proc.info["pid"]))
    if not found:
        return None, f"no process matches /{pattern}/"
    return min(found)[1], ""   # the oldest: the parent of a pre-forked service


SUPERVISOR_CONFS = ("/etc/supervisor/supervisord.conf", "/etc/supervisord.conf")
"""Where supervisorctl looks for its config when none is given (besides the working directory)."""


def _supervisor_socket(conf: str | None) -> str | None:
    """The unix socket supervisorctl would talk to, from its config ([supervisorctl] serverurl, else
    [unix_http_server] file); None for an HTTP server URL or no readable config."""
    import configparser

    for path in [conf] if conf else SUPERVISOR_CONFS:
        parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
        try:
            if not parser.read(path):
                continue
        except configparser.Error:
            return None
        url = parser.get("supervisorctl", "serverurl", fallback="") or ""
        if url.startswith("unix://"):
            return url[len("unix://"):]
        if url:
            return None
        socket_file = parser.get("unix_http_server", "file", fallback=None)
        return socket_file.replace("%(here)s", os.path.dirname(os.path.abspath(path))) if socket_file else None
    return None


def _pid_from_supervisord(program: str, conf: str | None, timeout: float) -> tuple[int | None, str]:
    """`supervisor.getProcessInfo` over supervisord's unix socket (XML-RPC, what supervisorctl does, without
    starting a Python interpreter for it: under load that alone takes seconds)."""
    import http.client
    import socket
    import xmlrpc.client

    path = _supervisor_socket(conf)
    if path is None or timeout <= 0:
        return None, "no supervisord unix socket in its config"

    class _Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            self.sock.connect(path)

    class _Transport(xmlrpc.client.Transport):
        def make_connection(self, host: Any) -> http.client.HTTPConnection:
            return _Connection("localhost", timeout=timeout)

    try:
        info = xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=_Transport()).supervisor.getProcessInfo(
            program)
    except (OSError, xmlrpc.client.Error, http.client.HTTPException) as exc:
        return None, f"supervisord at {path}: {exc}"
    pid = int(info.get("pid") or 0) if isinstance(info, dict) else 0
    return (pid, "") if pid > 0 else (None, f"supervisor program {program} is {info.get('statename', '?')}")


def find_pid(target: Mapping[str, Any], clock: _Clock) -> tuple[int | None, str, list[str]]:
    """(pid, how it was found, why the other ways failed) for a capture target (catalog keys and step targets)."""
    tried: list[str] = []
    if target.get("pid_file"):
        pid, why = _pid_from_file(str(target["pid_file"]))
        if pid is not None:
            return pid, f"pid file {target['pid_file']}", tried
        tried.append(why)
    if target.get("process"):
        pid, why = _pid_from_pattern(str(target["process"]))
        if pid is not None:
            return pid, f"process pattern /{target['process']}/", tried
        tried.append(why)
    if target.get("supervisor"):
        pid, why = _pid_from_supervisord(str(target["supervisor"]), target.get("supervisor_conf"), clock.left(2.0))
        if pid is not None:
            return pid, f"supervisor program {target['supervisor']}", tried
        if why.startswith("supervisor program"):   # supervisord answered: the program has no process now
            tried.append(why)
            target = {k: v for k, v in target.items() if k != "supervisor"}
    if target.get("supervisor"):
        conf = ["-c", str(target["supervisor_conf"])] if target.get("supervisor_conf") else []
        code, out, why = _run(["supervisorctl", *conf, "pid", str(target["supervisor"])], clock.left())
        if code is not None and out.strip().isdigit() and int(out.strip()) > 0:
            return int(out.strip()), f"supervisor program {target['supervisor']}", tried
        tried.append(f"supervisorctl pid {target['supervisor']}: {why or out.strip()[:200] or 'no pid'}")
    if target.get("systemd"):
        code, out, why = _run(["systemctl", "show", "-p", "MainPID", "--value", str(target["systemd"])],
                              clock.left())
        if code == 0 and out.strip().isdigit() and int(out.strip()) > 0:
            return int(out.strip()), f"systemd unit {target['systemd']}", tried
        tried.append(f"systemctl show {target['systemd']}: {why or 'no main pid'}")
    if not tried:
        tried.append("the catalog names no pid_file, process, supervisor or systemd for it")
    return None, "", tried


# --------------------------------------------------------------------------- what to record


def _process_state(pid: int) -> dict[str, Any]:
    import psutil

    proc = psutil.Process(pid)
    with proc.oneshot():
        memory = proc.memory_info()
        state: dict[str, Any] = {
            "pid": pid,
            "name": proc.name(),
            "cmdline": " ".join(proc.cmdline())[:500],
            "exe": _safe(proc.exe, ""),
            "status": proc.status(),
            "started_at": proc.create_time(),
            "cpu_percent": proc.cpu_percent(interval=None),
            "cpu_times": {"user": round(proc.cpu_times().user, 3), "system": round(proc.cpu_times().system, 3)},
            "memory_rss": memory.rss,
            "memory_vms": memory.vms,
            "memory_percent": round(proc.memory_percent(), 3),
            "threads": proc.num_threads(),
        }
    files = _safe(proc.open_files, None)
    if files is None:
        state["open_files_error"] = "not permitted"
        files = []
    state["open_files_count"] = len(files)
    state["open_files"] = [f.path for f in files[:MAX_LISTED]]
    getter = getattr(proc, "net_connections", None) or proc.connections
    conns = _safe(lambda: getter(kind="inet"), None)
    if conns is None:
        state["connections_error"] = "not permitted"
        conns = []
    state["connections_count"] = len(conns)
    state["connections"] = [
        {"local": _addr(c.laddr), "remote": _addr(c.raddr), "status": c.status} for c in conns[:MAX_LISTED]]
    state["cpu_percent"] = proc.cpu_percent(interval=0.1)   # over 0.1 s: the first call only primes it
    return state


def _safe(fn: Any, default: Any) -> Any:
    import psutil

    try:
        return fn()
    except (psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return default


def _addr(addr: Any) -> str:
    if not addr:
        return ""
    return f"{addr.ip}:{addr.port}" if hasattr(addr, "ip") else str(addr)


def is_python(state: Mapping[str, Any]) -> bool:
    """True when the process's executable or first argument is a Python interpreter."""
    names = [os.path.basename(str(state.get("exe") or "")), os.path.basename(str(state.get("name") or "")),
             os.path.basename((str(state.get("cmdline") or "").split() or [""])[0])]
    return any(n.startswith(("python", "pypy")) for n in names)


def py_spy_path() -> str | None:
    """The py-spy binary: beside this interpreter (a virtualenv), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return beside if os.access(beside, os.X_OK) else shutil.which("py-spy")


def thread_dump(pid: int, timeout: float, *, stopped: bool = False) -> dict[str, Any]:
    """`py-spy dump --pid N`, bounded; {"ok": True, "text": ...} or {"ok": False, "reason": ...}.

    A stopped process (SIGSTOP: hung on purpose or by a debugger) is read with `--nonblocking`: py-spy
    cannot suspend a multi-threaded process that is already stopped, and need not, since nothing runs."""
    binary = py_spy_path()
    if binary is None:
        return {"ok": False, "reason": "py-spy is not installed (pip install py-spy)"}
    argv = [binary, "dump", *(["--nonblocking"] if stopped else []), "--pid", str(pid)]
    code, out, why = _run(argv, timeout)
    if code == 0 and out.strip():
        return {"ok": True, "text": _bounded(out.rstrip(), MAX_DUMP_CHARS), "tool": "py-spy dump"}
    if code is None:
        return {"ok": False, "reason": why}
    reason = why or out.strip()[:300] or f"exit {code}"
    if "permission" in reason.lower() or "ptrace" in reason.lower() or "operation not permitted" in reason.lower():
        reason = f"not permitted (py-spy needs ptrace rights on the process: root or CAP_SYS_PTRACE): {reason}"
    return {"ok": False, "reason": f"py-spy failed: {reason}"}


def last_log_lines(paths: Iterable[str], limit: int = MAX_LOG_LINES) -> dict[str, Any] | None:
    """The last lines of the newest existing file among paths (globs allowed), at most MAX_LOG_BYTES read."""
    files: list[str] = []
    for path in paths:
        files.extend(sorted(glob.glob(path)) if glob.has_magic(path) else [path])
    existing = []
    for f in files:
        try:
            existing.append((os.stat(f).st_mtime, f))
        except OSError:
            continue
    if not existing:
        return {"path": ", ".join(files), "lines": [], "error": "no such file"} if files else None
    path = max(existing)[1]
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - MAX_LOG_BYTES))
            data = handle.read(MAX_LOG_BYTES)
    except OSError as exc:
        return {"path": path, "lines": [], "error": exc.strerror or str(exc)}
    lines = data.decode("utf-8", "replace").splitlines()
    if size > MAX_LOG_BYTES and lines:
        lines = lines[1:]   # the first line read is probably cut
    return {"path": path, "lines": [line[:500] for line in lines[-limit:]]}


def capture_service(service: str | None, target: Mapping[str, Any], *, log_files: Iterable[str] = (),
                    before: str = "", budget: float = CAPTURE_BUDGET) -> dict[str, Any]:
    """Everything capturable about the service now; never raises, never takes much more than `budget`."""
    import psutil

    started = time.monotonic()
    clock = _Clock(budget)
    out: dict[str, Any] = {"service": service, "before": before, "captured_at": time.time()}
    try:
        out["log"] = last_log_lines(log_files)
        pid, found_by, tried = find_pid(target, clock)
        out["found_by"] = found_by
        if pid is None:
            out["process_error"] = "process not found: " + "; ".join(tried)
        else:
            try:
                out["process"] = _process_state(pid)
            except psutil.NoSuchProcess:
                out["process_error"] = f"pid {pid} ({found_by}) is not running"
            except psutil.Error as exc:
                out["process_error"] = f"pid {pid}: {type(exc).__name__}: {exc}"
        process = out.get("process")
        if process is None:
            out["thread_dump"] = {"ok": False, "reason": "no process to dump"}
        elif not (is_python(process) or target.get("python")):
            out["thread_dump"] = {"ok": False, "reason": f"not a Python process ({process.get('name')})"}
        else:
            out["thread_dump"] = thread_dump(process["pid"], clock.left(),
                                             stopped=process.get("status") == psutil.STATUS_STOPPED)
    except Exception as exc:   # a capture must never stop the repair
        out["error"] = f"{type(exc).__name__}: {exc}"
    out["duration"] = round(time.monotonic() - started, 3)
    return out


def summary(capture: Mapping[str, Any]) -> str:
    """The capture as plain text (timeline line, escalation payload)."""
    lines = []
    process = capture.get("process")
    if process:
        lines.append(f"process {process['pid']} ({process.get('name')}, found by {capture.get('found_by')}): "
                     f"status {process.get('status')}, CPU {process.get('cpu_percent')}%, "
                     f"RSS {int(process.get('memory_rss') or 0) // 1024} KiB, {process.get('threads')} threads, "
                     f"{process.get('open_files_count')} open files, {process.get('connections_count')} connections")
    else:
        lines.append(str(capture.get("process_error") or capture.get("error") or "process not captured"))
    dump = capture.get("thread_dump") or {}
    if dump.get("ok"):
        lines.append("thread dump (py-spy):")
        lines += ["  " + line for line in str(dump.get("text", "")).splitlines()]
    elif dump:
        lines.append(f"no thread dump: {dump.get('reason')}")
    log = capture.get("log") or {}
    if log.get("lines"):
        lines.append(f"last {len(log['lines'])} log lines of {log.get('path')}:")
        lines += ["  " + line for line in log["lines"]]
    elif log.get("error"):
        lines.append(f"log {log.get('path')}: {log['error']}")
    return "\n".join(lines)
