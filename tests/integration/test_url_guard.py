"""Where a runbook's HTTP request may go (erdu_tasks/fixer/urlguard.py), against real local HTTP servers.

An incident's {host} may aim a runbook URL only at an allowlisted host; nothing reaches a link-local or
metadata address; the request connects to the address that was checked; redirects are not followed.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from erdu_tasks.fixer.actions import run_step
from erdu_tasks.fixer.checks import CheckSpec, run_check
from erdu_tasks.fixer.runbooks import Step
from erdu_tasks.fixer.urlguard import UrlPolicy, policy_from
from erdu_tasks.runtime import Runtime
from erdu_tasks.settings import load_settings

from erdu_tasks.errors import ConfigError as _ConfigError


class _Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.server.seen.append({"path": self.path, "host": self.headers.get("Host")})  # type: ignore[attr-defined]
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


def _serve(address: str) -> tuple[ThreadingHTTPServer, threading.Thread]:
    server = ThreadingHTTPServer((address, 0), _Handler)
    server.seen = []  # type: ignore[attr-defined]
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, ThreadingHTTPServer]]:
    """One server on 127.0.0.1 (allowlisted in these tests) and one on 127.0.0.2 (not), same port if possible."""
    main, _ = _serve("127.0.0.1")
    port = main.server_address[1]
    try:
        other = ThreadingHTTPServer(("127.0.0.2", port), _Handler)
        other.seen = []  # type: ignore[attr-defined]
        other.daemon_threads = True
        threading.Thread(target=other.serve_forever, daemon=True).start()
    except OSError:
        pytest.skip("127.0.0.2 is not bindable here")
    try:
        yield {"main": main, "other": other}
    finally:
        for s in (main, other):
            s.shutdown()
            s.server_close()


@pytest.fixture
def seen(servers: dict[str, ThreadingHTTPServer]) -> dict[str, list[dict[str, Any]]]:
    for s in servers.values():
        s.seen.clear()  # type: ignore[attr-defined]
    return {name: s.seen for name, s in servers.items()}  # type: ignore[attr-defined]


def _port(servers: dict[str, ThreadingHTTPServer]) -> int:
    return servers["main"].server_address[1]


POLICY = UrlPolicy.build(["127.0.0.1", "web-1.internal"])


def _call(host: str, port: int, policy: UrlPolicy = POLICY) -> Any:
    step = Step(action="http_call", params={"method": "POST", "url": f"http://{{host}}:{port}/restart"}, timeout=5)
    return run_step(step, {"host": host, "service": "web"}, url_policy=policy)


@pytest.mark.parametrize(("host", "why"), [
    ("127.0.0.2", "not allowlisted"),                      # another loopback address
    ("127.1.2.3", "not allowlisted"),
    ("localhost", "not allowlisted"),                      # a name for an allowlisted address is not that address
    ("169.254.169.254", "not allowlisted"),                # cloud metadata
    ("metadata.google.internal", "not allowlisted"),
    ("a@127.0.0.1", "userinfo"),                           # userinfo tricks, either way round
    ("127.0.0.1@evil.example", "userinfo"),
    ("::1", "not allowlisted"),                            # IPv6, loopback and link-local, mapped
    ("fe80::1", "not allowlisted"),
    ("::ffff:127.0.0.2", "not allowlisted"),
    ("2130706433", "non-canonical"),                       # 127.0.0.1 as one decimal number
    ("2130706434", "non-canonical"),                       # 127.0.0.2
    ("0x7f.0.0.1", "non-canonical"),                       # hex
    ("0177.0.0.1", "non-canonical"),                       # octal
    ("127.1", "non-canonical"),                            # short form
    ("127.0.0.1:6379", "neither a host name nor an IP"),   # a port smuggled in with the host
    ("127.0.0.1%2f", "only letters, digits"),              # percent-encoding is refused by the charset
    ("127.0.0.1%40evil", "only letters, digits"),
])
def test_an_incident_host_outside_the_allowlist_is_refused_with_the_reason(
        host: str, why: str, servers: dict[str, ThreadingHTTPServer], seen: dict[str, list]) -> None:
    result = _call(host, _port(servers))
    assert not result.ok
    assert result.detail.startswith("refused: ")
    assert why in result.detail
    assert seen == {"main": [], "other": []}


def test_an_allowlisted_host_is_reached(servers: dict[str, ThreadingHTTPServer], seen: dict[str, list]) -> None:
    result = _call("127.0.0.1", _port(servers))
    assert result.ok, result.detail
    assert [r["path"] for r in seen["main"]] == ["/restart"]
    assert seen["other"] == []
    # Not allowlisted, the same host is refused: the allowlist, not the charset, decides.
    refused = _call("127.0.0.1", _port(servers), UrlPolicy())
    assert not refused.ok and "not allowlisted" in refused.detail


def test_a_network_in_the_allowlist_admits_its_addresses_only(servers: dict[str, ThreadingHTTPServer],
                                                               seen: dict[str, list]) -> None:
    policy = UrlPolicy.build(["127.0.0.2/32"])
    assert _call("127.0.0.2", _port(servers), policy).ok
    assert len(seen["other"]) == 1 and seen["main"] == []
    assert "not allowlisted" in _call("127.0.0.1", _port(servers), policy).detail


def test_the_request_connects_to_the_checked_address_with_the_original_host_header(
        servers: dict[str, ThreadingHTTPServer], seen: dict[str, list], monkeypatch: pytest.MonkeyPatch) -> None:
    """The name is resolved once and checked; the connection goes to that address (no second lookup that a
    rebinding DNS server could answer differently), and the server still sees the name in Host."""
    answers = iter([["127.0.0.1"], ["169.254.169.254"]])
    real = socket.getaddrinfo

    def fake(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "web-1.internal":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in next(answers)]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    result = _call("web-1.internal", _port(servers))
    assert result.ok, result.detail
    assert result.output["address"] == "127.0.0.1"
    assert seen["main"] == [{"path": "/restart", "host": f"web-1.internal:{_port(servers)}"}]
    # The next lookup answers a metadata address: refused after resolution, though the name is allowlisted.
    again = _call("web-1.internal", _port(servers))
    assert not again.ok and "resolves to 169.254.169.254" in again.detail
    assert len(seen["main"]) == 1


def test_every_resolved_address_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
        (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00:ec2::254", port, 0, 0))])
    result = _call("web-1.internal", 80)
    assert not result.ok and "fd00:ec2::254" in result.detail and "metadata" in result.detail


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://100.100.100.200/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://[fe80::1]/",
    "http://[::ffff:169.254.169.254]/",        # IPv4-mapped IPv6
    "http://[64:ff9b::a9fe:a9fe]/",            # NAT64 of 169.254.169.254
    "http://0.0.0.0:1/",
])
def test_metadata_and_link_local_addresses_are_refused_even_when_the_runbook_names_them(url: str) -> None:
    result = run_step(Step(action="http_call", params={"url": url}, timeout=2), {})
    assert not result.ok and result.detail.startswith("refused: ")
    assert "link-local" in result.detail or "metadata" in result.detail
    allowed = UrlPolicy(allow_link_local=True).refused_address
    assert allowed(__import__("ipaddress").ip_address("169.254.169.254")) is None


def test_redirects_are_not_followed(servers: dict[str, ThreadingHTTPServer], seen: dict[str, list]) -> None:
    step = Step(action="http_call", params={"url": f"http://127.0.0.1:{_port(servers)}/redirect"}, timeout=5)
    result = run_step(step, {})
    assert not result.ok and "returned 302" in result.detail
    assert [r["path"] for r in seen["main"]] == ["/redirect"]


def test_validation_checks_obey_the_same_policy(servers: dict[str, ThreadingHTTPServer],
                                                seen: dict[str, list]) -> None:
    spec = TypeAdapter(CheckSpec).validate_python(
        {"check": "http", "url": f"http://{{host}}:{_port(servers)}/health", "timeout": 2})
    refused = run_check(spec, {"host": "127.0.0.2"}, url_policy=POLICY)
    assert not refused.ok and "not allowlisted" in refused.detail
    assert run_check(spec, {"host": "127.0.0.1"}, url_policy=POLICY).ok
    assert [r["path"] for r in seen["main"]] == ["/health"] and seen["other"] == []


def test_the_runtime_allowlists_the_catalog_hosts_and_the_setting(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("services:\n  - name: web\n    hosts: [web-1.internal, 10.0.3.0/24]\n")
    settings = load_settings(catalog_file=catalog, runbook_hosts=["db-1.internal", "127.0.0.1"])
    policy = Runtime(settings, db=object()).url_policy  # type: ignore[arg-type]
    for host in ("web-1.internal", "10.0.3.7", "db-1.internal", "127.0.0.1"):
        assert policy.check_incident_host(host)
    assert policy == policy_from(settings, ["web-1.internal", "10.0.3.0/24"])
    with pytest.raises(_ConfigError, match="runbook_hosts"):
        load_settings(runbook_hosts=["a@b"])
