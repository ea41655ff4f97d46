"""Helpers for the escalation tests: a local HTTP endpoint, incidents in a real database, an injected clock."""

from __future__ import annotations

import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import redis

from erdu_tasks.escalation.start import escalate as escalate_in_tx
from erdu_tasks.store import incidents as store
from erdu_tasks.store.db import Database
from erdu_tasks.escalation.runs import escalation_config
from erdu_tasks.escalation.sweep import Escalator
from erdu_tasks.model import Severity
from erdu_tasks.store.incidents import NewIncident

SECRET = "a-long-shared-secret-for-hmac"


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"ok"
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Endpoints:
    """A real HTTP server on a free port standing in for webhook, Slack and PagerDuty; records every request."""

    replies: dict[str, Reply] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with lock:
                    outer.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                reply = outer.replies.get(self.path, Reply())
                if reply.delay:
                    time.sleep(reply.delay)
                self.send_response(reply.status)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def webhook(endpoints: Endpoints, path: str, **extra: Any) -> dict[str, Any]:
    return {"type": "webhook", "url": endpoints.url + path, "secret": SECRET, **extra}


def minute_start(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def new_incident(conn, *, service: str, severity: str = "P1", title: str | None = None,
                 tags: list[str] | None = None, labels: dict[str, str] | None = None) -> str:
    """A fresh incident (detected) with its own fingerprint."""
    result = store.upsert_incident(conn, NewIncident(
        fingerprint=f"fp-{service}-{secrets.token_hex(6)}", template="t", title=title or f"{service} is failing",
        description="", severity=Severity(severity), source="test", service=service, host=None,
        affected_services=[service], tags=tags or [], labels=labels or {}, error_details={}, samples=[], count=1))
    return result.incident_id


def escalate(conn, incident_id: str, *, now: datetime, reason: str = "runbook did not fix it") -> None:
    """Move an incident to escalated through the one way in, its run opened at `now`."""
    incident = store.get_incident(conn, incident_id, for_update=True)
    assert escalate_in_tx(conn, incident, reason=reason, stage="fix", actor="test", worker=None, now=now)


def make_escalator(db: Database, section: dict[str, Any], *, redis=None, catalog=None, rules=None,
                   tmp=None, worker: str = "sweeper-1", prefix: str | None = None) -> Escalator:
    """An Escalator as a worker builds it, with a fixed jitter (backoff = the full delay) and private Redis keys."""
    kwargs: dict[str, Any] = {}
    if rules is not None:
        kwargs["rules"] = rules
    return Escalator(db=db, config=escalation_config(section, tmp or "alerts"), catalog=catalog, redis=redis,
                     worker=worker, rate_prefix=prefix or f"test:{secrets.token_hex(4)}:", jitter=lambda: 1.0,
                     **kwargs)


def rows(db: Database, sql: str, params: Any = ()) -> list[dict[str, Any]]:
    with db.transaction() as conn:
        return conn.execute(sql, params).fetchall()


def timeline_whats(db: Database, incident_id: str) -> list[str]:
    return [r["what"] for r in rows(db, "SELECT what FROM incident_timeline WHERE incident_id = %s ORDER BY id",
                                    (incident_id,))]


def later(t: datetime, **kw: float) -> datetime:
    return t + timedelta(**kw)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# ---- fixtures the escalation test modules share (import them by name) ----------------------------


@pytest.fixture()
def endpoints():
    """A local HTTP server standing in for every webhook, Slack and PagerDuty endpoint."""
    server = Endpoints()
    yield server
    server.close()


@pytest.fixture()
def db(fresh_database_url):
    """A pool on the test's own database."""
    database = Database(fresh_database_url, max_size=8)
    yield database
    database.close()


@pytest.fixture()
def redis_client(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture()
def t0() -> datetime:
    """A moment 5 s into the current minute, so per-minute counters do not roll over mid-test."""
    return minute_start(datetime.now(timezone.utc)) + timedelta(seconds=5)
