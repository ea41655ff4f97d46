"""Channels against real local endpoints: an HTTP server in a thread and an aiosmtpd SMTP server."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import message_from_bytes, policy
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from erdu_tasks.escalation.policy import EscalationConfig
from erdu_tasks.escalation.channels import AttemptedFix, Notification, NotificationKind, build_channels
from erdu_tasks.escalation.channels.email import EmailChannel, EmailSettings
from erdu_tasks.escalation.channels.pagerduty import PagerDutyChannel, PagerDutySettings
from erdu_tasks.escalation.channels.slack import SlackChannel, SlackSettings, slack_payload
from erdu_tasks.escalation.channels.webhook import WebhookChannel, WebhookSettings, verify_signature

SECRET = "a-long-shared-secret-for-hmac"
NOTIFICATION = Notification(
    incident_id="INC-20250303120000-abcd1234",
    title="Database connection failed <!channel> & co",
    severity="P1",
    status="escalated",
    reason="fix restart-db did not pass validation",
    level=2,
    repeat=1,
    service="orders-db",
    affected_services=("orders-db", "checkout"),
    root_cause="connection pool exhausted",
    attempted_fixes=(AttemptedFix("restart-db", False, "exit 1\nunit failed"),),
    occurrences=42,
    url="https://erdu.example.com/incidents/INC-20250303120000-abcd1234",
    created_at=datetime(2025, 3, 3, 12, 0, tzinfo=timezone.utc),
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class FakeEndpoints:
    """A real HTTP server on a free port; replies are set per path, requests are recorded."""

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.received: list[Received] = []
        endpoints = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                endpoints.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                reply = endpoints.replies.get(self.path, Reply())
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoints():
    server = FakeEndpoints()
    yield server
    server.close()


# --------------------------------------------------------------------------- webhook


def test_webhook_posts_the_exact_json_with_a_valid_hmac_signature(endpoints):
    channel = WebhookChannel(
        "hook",
        WebhookSettings(url=endpoints.url + "/hook", secret=SECRET, headers={"X-Team": "sre"}),
        clock=lambda: 1741003200,
    )
    result = channel.send(NOTIFICATION)
    assert result.ok and result.response_code == 200 and result.channel == "hook"
    [request] = endpoints.received
    assert request.path == "/hook"
    assert request.body == NOTIFICATION.to_json_bytes()
    payload = json.loads(request.body)
    assert payload["incident_id"] == NOTIFICATION.incident_id and payload["level"] == 2
    assert payload["attempted_fixes"] == [{"action": "restart-db", "ok": False, "output": "exit 1\nunit failed"}]
    assert payload["see"]["command"] == "erdu incidents show INC-20250303120000-abcd1234"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-team"] == "sre"
    assert request.headers["x-erdu-event"] == "trigger"
    assert request.headers["x-erdu-timestamp"] == "1741003200"
    expected = hmac.new(SECRET.encode(), b"1741003200." + request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-erdu-signature"] == f"sha256={expected}"
    assert verify_signature(SECRET.encode(), "1741003200", request.body, f"sha256={expected}", now=1741003260)
    assert not verify_signature(SECRET.encode(), "1741003200", request.body + b" ", f"sha256={expected}",
                                now=1741003260)
    assert not verify_signature(SECRET.encode(), "1741003200", request.body, f"sha256={expected}",
                                now=1741003200 + 3600)  # a replay an hour later


def test_webhook_resolve_is_a_signed_resolve_event(endpoints):
    channel = WebhookChannel("hook", WebhookSettings(url=endpoints.url + "/hook", secret=SECRET))
    assert channel.resolve(NOTIFICATION).ok
    [request] = endpoints.received
    assert request.headers["x-erdu-event"] == "resolve"
    assert json.loads(request.body)["kind"] == "resolve"
    ts = request.headers["x-erdu-timestamp"]
    assert verify_signature(SECRET.encode(), ts, request.body, request.headers["x-erdu-signature"], now=time.time())


# --------------------------------------------------------------------------- slack


def test_slack_gets_readable_text_and_blocks_with_event_text_escaped(endpoints):
    channel = SlackChannel("slack", SlackSettings(url=endpoints.url + "/slack"))
    assert channel.send(NOTIFICATION).ok
    [request] = endpoints.received
    assert request.body == json.dumps(slack_payload(NOTIFICATION), ensure_ascii=False).encode()
    payload = json.loads(request.body)
    assert payload["text"] == (
        "[P1] INC-20250303120000-abcd1234: Database connection failed &lt;!channel&gt; &amp; co (level 2, repeat 1)"
    )
    assert payload["blocks"][0]["text"]["type"] == "plain_text"  # the header is never parsed for mentions
    kinds = [b["type"] for b in payload["blocks"]]
    assert kinds[0] == "header" and kinds[-1] == "context"
    rendered = json.dumps(payload["blocks"][1:])
    assert "<!channel>" not in rendered  # no mention can be forged from event text
    assert "connection pool exhausted" in rendered and "restart-db" in rendered
    assert "erdu incidents show INC-20250303120000-abcd1234" in rendered
    assert "<https://erdu.example.com/incidents/INC-20250303120000-abcd1234|open in ERDU>" in rendered


# --------------------------------------------------------------------------- pagerduty


def test_pagerduty_triggers_with_the_incident_as_dedup_key_and_resolves_it(endpoints):
    accepted = Reply(202, b'{"status":"success","message":"Event processed","dedup_key":"x"}')
    endpoints.replies["/v2/enqueue"] = accepted
    channel = PagerDutyChannel(
        "pd", PagerDutySettings(routing_key="R" * 32, events_url=endpoints.url + "/v2/enqueue")
    )
    sent = channel.send(NOTIFICATION)
    done = channel.resolve(NOTIFICATION)
    assert sent.ok and sent.response_code == 202 and done.ok
    trigger, resolve = (json.loads(r.body) for r in endpoints.received)
    assert trigger["routing_key"] == "R" * 32
    assert trigger["event_action"] == "trigger"
    assert trigger["dedup_key"] == "INC-20250303120000-abcd1234"
    assert trigger["payload"]["severity"] == "critical"
    assert trigger["payload"]["source"] == "orders-db"
    assert trigger["payload"]["summary"].startswith("[P1] INC-20250303120000-abcd1234: Database connection failed")
    assert trigger["payload"]["custom_details"]["root_cause"] == "connection pool exhausted"
    assert trigger["links"] == [{"href": NOTIFICATION.url, "text": "ERDU INC-20250303120000-abcd1234"}]
    assert resolve == {"routing_key": "R" * 32, "event_action": "resolve", "dedup_key": NOTIFICATION.incident_id}


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "reply, permanent, code, retry_after, words",
    [
        (Reply(400, b'{"status":"invalid event","errors":["routing_key invalid"]}'), True, 400, None, "routing_key"),
        (Reply(404, b"no_service"), True, 404, None, "no_service"),
        (Reply(410, b"channel_is_archived"), True, 410, None, "channel_is_archived"),
        (Reply(429, b"slow down", {"Retry-After": "7"}), False, 429, 7.0, "slow down"),
        (Reply(500, b"rollup_error"), False, 500, None, "rollup_error"),
        (Reply(503, b"maintenance"), False, 503, None, "maintenance"),
        (Reply(302, b"", {"Location": "https://elsewhere/"}), True, 302, None, "configure the final URL"),
    ],
)
@pytest.mark.parametrize("kind", ["webhook", "slack", "pagerduty"])
def test_a_failing_endpoint_gives_a_failed_result_not_an_exception(endpoints, kind, reply, permanent, code,
                                                                   retry_after, words):
    endpoints.replies["/x"] = reply
    channel = build_channels(_config(kind, endpoints.url + "/x"))[kind]
    result = channel.send(NOTIFICATION)
    assert not result.ok
    assert (result.permanent, result.response_code, result.retry_after) == (permanent, code, retry_after)
    assert words in result.detail and result.channel == kind
    assert len(endpoints.received) == 1


@pytest.mark.parametrize("kind", ["webhook", "slack", "pagerduty"])
def test_unreachable_and_slow_endpoints_are_worth_retrying(endpoints, kind):
    endpoints.replies["/slow"] = Reply(200, b"ok", delay=1.0)
    slow = build_channels(_config(kind, endpoints.url + "/slow", timeout=0.2))[kind]
    started = time.monotonic()
    result = slow.send(NOTIFICATION)
    assert time.monotonic() - started < 0.9
    assert not result.ok and not result.permanent and "timed out" in result.detail
    closed = build_channels(_config(kind, f"http://127.0.0.1:{free_port()}/x"))[kind]
    result = closed.send(NOTIFICATION)
    assert not result.ok and not result.permanent and result.response_code is None
    assert "ConnectError" in result.detail


def _config(kind: str, url: str, timeout: float = 2.0) -> EscalationConfig:
    settings: dict = {"type": kind, "timeout": timeout}
    if kind == "webhook":
        settings |= {"url": url, "secret": SECRET}
    elif kind == "slack":
        settings |= {"url": url}
    else:
        settings |= {"routing_key": "R" * 32, "events_url": url}
    return EscalationConfig.from_settings_section({"channels": {kind: settings}})


# --------------------------------------------------------------------------- email


class Inbox:
    """An aiosmtpd handler that keeps every message and can refuse a recipient."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], Message]] = []
        self.refuse: set[str] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        if address in self.refuse:
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        message = message_from_bytes(envelope.content, policy=policy.default)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted"


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"erdu", b"s3cret")
    return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535 itself


@pytest.fixture
def smtp_server():
    servers = []

    def start(**smtp_kwargs) -> tuple[Inbox, int]:
        inbox = Inbox()
        port = free_port()
        controller = Controller(inbox, hostname="127.0.0.1", port=port, **smtp_kwargs)
        controller.start()
        servers.append(controller)
        return inbox, port

    yield start
    for controller in servers:
        controller.stop()


def _email(port: int, **extra) -> EmailChannel:
    settings = {"host": "127.0.0.1", "port": port, "sender": "erdu@example.com",
                "recipients": ["oncall@example.com", "boss@example.com"], "timeout": 5, **extra}
    return EmailChannel("mail", EmailSettings(**settings))


def test_email_sends_a_plain_text_message_threaded_by_incident(smtp_server):
    inbox, port = smtp_server()
    result = _email(port).send(NOTIFICATION)
    assert result.ok, result.detail
    [(sender, rcpts, msg)] = inbox.messages
    assert sender == "erdu@example.com" and rcpts == ["oncall@example.com", "boss@example.com"]
    assert msg["Subject"] == (
        "[ERDU] [P1] INC-20250303120000-abcd1234: Database connection failed <!channel> & co (level 2, repeat 1)"
    )
    assert msg["References"] == "<INC-20250303120000-abcd1234@erdu>"
    assert msg.get_content_type() == "text/plain"
    body = msg.get_content()
    for expected in ("fix restart-db did not pass validation", "connection pool exhausted", "restart-db: failed",
                     "unit failed", "orders-db, checkout", "erdu incidents show INC-20250303120000-abcd1234"):
        assert expected in body


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_email_with_login(smtp_server):
    inbox, port = smtp_server(authenticator=_authenticator, auth_require_tls=False, auth_required=True)
    assert _email(port, username="erdu", password="s3cret").send(NOTIFICATION).ok
    wrong = _email(port, username="erdu", password="wrong").send(NOTIFICATION)
    assert not wrong.ok and wrong.permanent and wrong.response_code == 535
    assert len(inbox.messages) == 1


def test_email_over_starttls(smtp_server, tmp_path: Path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    inbox, port = smtp_server(tls_context=context, require_starttls=True, authenticator=_authenticator)
    ok = _email(port, security="starttls", ca_file=str(cert), username="erdu", password="s3cret")
    assert ok.send(NOTIFICATION).ok
    plain = _email(port).send(NOTIFICATION)  # the server insists on STARTTLS
    assert not plain.ok and plain.permanent and plain.response_code == 530
    untrusted = _email(port, security="starttls").send(NOTIFICATION)  # self-signed, no ca_file
    assert not untrusted.ok and untrusted.permanent and "certificate" in untrusted.detail
    assert len(inbox.messages) == 1


def test_email_failures_are_results(smtp_server):
    inbox, port = smtp_server()
    inbox.refuse = {"oncall@example.com", "boss@example.com"}
    refused = _email(port).send(NOTIFICATION)
    assert not refused.ok and refused.permanent and refused.response_code == 550
    inbox.refuse = {"boss@example.com"}
    partly = _email(port).send(NOTIFICATION)
    assert partly.ok and "refused" in partly.detail and "boss@example.com" in partly.detail
    down = _email(free_port(), timeout=1).send(NOTIFICATION)
    assert not down.ok and not down.permanent and "Connection" in down.detail


def test_every_channel_sends_a_resolve_notice(endpoints, tmp_path: Path):
    cfg = EscalationConfig.from_settings_section(
        {"channels": {"file": {}, "slack": {"url": endpoints.url + "/s"},
                      "quiet": {"type": "webhook", "url": endpoints.url + "/w", "secret": SECRET,
                                "send_resolved": False}}},
        alerts_dir=tmp_path,
    )
    results = {name: ch.resolve(NOTIFICATION) for name, ch in build_channels(cfg).items()}
    assert all(r.ok for r in results.values())
    assert Path(results["file"].detail).name == "INC-20250303120000-abcd1234-resolved-0001.json"
    assert [r.path for r in endpoints.received] == ["/s"]  # the webhook has resolve notices off
    assert json.loads(endpoints.received[0].body)["text"].startswith("[RESOLVED] [P1]")
    assert NOTIFICATION.resolved().kind is NotificationKind.RESOLVE
