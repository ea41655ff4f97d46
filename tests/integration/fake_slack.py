"""A local fake Slack: a real HTTP server speaking the parts of Slack's protocol ERDU uses.

- `POST /services/T/B/X`: an incoming webhook; the message is kept (with a ts, as Slack gives it).
- `POST /actions/<ts>/<n>`: an interaction's response_url; `replace_original` replaces the message,
  `response_type: ephemeral` is kept as a reply only the clicking user would see.
- `click(...)` builds the form body Slack POSTs to an app's Interactivity Request URL when someone
  clicks a button of a kept message, and `signed(...)` signs it as Slack does (v0 HMAC-SHA256).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode

HOOK_PATH = "/services/T0ERDU/B0ERDU/hook"


@dataclass
class Message:
    """A message in the fake channel, as Slack would render it now."""

    ts: str
    text: str
    blocks: list[dict[str, Any]]
    updates: int = 0

    def button(self, action_id: str) -> dict[str, Any] | None:
        for block in self.blocks:
            if block.get("type") == "actions":
                for element in block.get("elements", []):
                    if element.get("action_id") == action_id:
                        return element
        return None

    def rendered(self) -> str:
        return json.dumps(self.blocks, ensure_ascii=False)


@dataclass
class FakeSlack:
    messages: list[Message] = field(default_factory=list)
    ephemeral: list[str] = field(default_factory=list)
    requests: list[tuple[str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self
        self._lock = threading.Lock()
        self._ts = itertools.count(1)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, reply = outer._receive(self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def hook_url(self) -> str:
        return self.url + HOOK_PATH

    def _receive(self, path: str, body: bytes) -> tuple[int, bytes]:
        with self._lock:
            self.requests.append((path, body))
            try:
                data = json.loads(body)
            except ValueError:
                return 400, b"invalid_payload"
            if path == HOOK_PATH:
                ts = f"{int(time.time())}.{next(self._ts):06d}"
                self.messages.append(Message(ts, data.get("text", ""), data.get("blocks", [])))
                return 200, b"ok"
            if path.startswith("/actions/"):
                ts = path.split("/")[2]
                message = next((m for m in self.messages if m.ts == ts), None)
                if message is None:
                    return 404, b"no_such_message"
                if data.get("response_type") == "ephemeral":
                    self.ephemeral.append(data.get("text", ""))
                elif data.get("replace_original"):
                    message.text = data.get("text", message.text)
                    message.blocks = data.get("blocks", [])
                    message.updates += 1
                return 200, b"ok"
            return 404, b"no_service"

    def response_posts(self) -> int:
        """How many answers ERDU sent to response_urls."""
        return sum(path.startswith("/actions/") for path, _ in self.requests)

    def click(self, message: Message, action_id: str, user_id: str, *, team: str = "T0ERDU") -> bytes:
        """The form body Slack sends when user_id clicks the button action_id of message."""
        button = message.button(action_id)
        assert button is not None, f"no {action_id} button on the message: {message.rendered()}"
        payload = {
            "type": "block_actions",
            "user": {"id": user_id, "username": user_id.lower(), "team_id": team},
            "api_app_id": "A0ERDU",
            "token": "deprecated-verification-token",
            "container": {"type": "message", "message_ts": message.ts, "channel_id": "C0ONCALL",
                          "is_ephemeral": False},
            "trigger_id": f"{time.time_ns()}.trigger",
            "team": {"id": team, "domain": "erdu-test"},
            "channel": {"id": "C0ONCALL", "name": "oncall"},
            "message": {"type": "message", "text": message.text, "ts": message.ts, "blocks": message.blocks},
            "response_url": f"{self.url}/actions/{message.ts}/{time.time_ns()}",
            "actions": [{"action_id": action_id, "block_id": "erdu.actions", "type": "button",
                         "text": button["text"], "value": button.get("value"),
                         "action_ts": f"{time.time():.6f}"}],
        }
        return urlencode({"payload": json.dumps(payload)}).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def signed(body: bytes, secret: str, *, timestamp: int | None = None, retry: int | None = None) -> dict[str, str]:
    """The headers Slack sends with body: its v0 signature over `v0:{timestamp}:{body}`."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256).hexdigest()
    headers = {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": f"v0={digest}",
               "Content-Type": "application/x-www-form-urlencoded"}
    if retry is not None:
        headers["X-Slack-Retry-Num"] = str(retry)
        headers["X-Slack-Retry-Reason"] = "http_timeout"
    return headers
