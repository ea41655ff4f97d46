"""Settings secrets never show: not in the settings' repr, the Celery configuration, a worker's logs or /metrics.

One real worker runs on a Redis that requires a password and a database URL with a password (Postgres
trusts local connections here, so any password works), with every secret setting given.
"""

from __future__ import annotations

import io
import json
import logging

import pytest
import redis
from prometheus_client import generate_latest

from erdu_tasks.settings import load_settings, secret_values
from tests.conftest import RedisServer, incident_rows, wait_for

SECRETS = {
    "redis": "redis-pass-4d1f9a",
    "db": "db-pass-7c2e1b",
    "write": "api-write-token-91ab37",
    "read": "api-read-token-0fe2c8",
    "brain": "sk-brain-key-55de10",
    "flower": "flower-pass-a83c2f",
    "webhook": "webhook-hmac-secret-6b0d77e1",
    "slack": "slack-webhook-path-9q8w7e",
    "pagerduty": "pd-routing-key-3e4r5t",
    "smtp": "smtp-pass-2z3x4c",
    "cache": "cache-pass-1a2s3d",
}

ESCALATION = {"channels": {
    "hook": {"type": "webhook", "url": "http://127.0.0.1:9/hook", "secret": SECRETS["webhook"]},
    "oncall-slack": {"type": "slack", "url": f"https://hooks.slack.com/services/T0/B0/{SECRETS['slack']}"},
    "pd": {"type": "pagerduty", "routing_key": SECRETS["pagerduty"]},
    "mail": {"type": "email", "host": "127.0.0.1", "username": "erdu", "password": SECRETS["smtp"],
             "sender": "erdu@example.com", "recipients": ["oncall@example.com"]},
}}


def _leaks(text: str) -> list[str]:
    return [name for name, value in SECRETS.items() if value in text]


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("locked-redis"), extra_args=("--requirepass", SECRETS["redis"]))
    yield server
    server.stop()


def _env(redis_url: str, database_url: str) -> dict[str, str]:
    return {
        "ERDU_REDIS_URL": redis_url, "ERDU_DATABASE_URL": database_url,
        "ERDU_API_TOKEN": SECRETS["write"], "ERDU_API_READ_TOKEN": SECRETS["read"],
        "ERDU_BRAIN__API_KEY": SECRETS["brain"],
        "ERDU_FLOWER__USER": "ops", "ERDU_FLOWER__PASSWORD": SECRETS["flower"],
        "ERDU_CACHE_REDIS_URL": f"redis://:{SECRETS['cache']}@127.0.0.1:6390/0",
        "ERDU_ESCALATION": json.dumps(ESCALATION),
    }


def _settings(redis_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch):
    for key, value in _env(redis_url, database_url).items():
        monkeypatch.setenv(key, value)
    return load_settings()


def test_no_secret_in_the_settings_repr_the_celery_configuration_or_metrics(locked_redis, fresh_database_url,
                                                                             monkeypatch) -> None:
    redis_url = f"redis://:{SECRETS['redis']}@127.0.0.1:{locked_redis.port}/3"
    database_url = fresh_database_url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRETS['db']}@")
    settings = _settings(redis_url, database_url, monkeypatch)
    # Every secret is in the settings, readable where it is used ...
    assert set(secret_values(settings)) >= set(SECRETS.values()) - {SECRETS["slack"]}
    assert settings.api_token.get_secret_value() == SECRETS["write"] and str(settings.redis_url) == redis_url
    # ... and shown nowhere.
    assert _leaks(repr(settings)) == [] and _leaks(str(settings)) == []
    assert _leaks(repr(settings.escalation)) == [] and _leaks(repr(settings.flower)) == []

    from erdu_tasks.app import make_celery

    app = make_celery(settings)
    assert _leaks(repr(app.conf.table(with_defaults=True))) == []
    assert _leaks(repr(dict(app.conf))) == [] and _leaks(repr(app.conf.humanize(with_defaults=True))) == []
    # The transport still connects with the password it kept off the configuration.
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
        assert conn.default_channel.client.ping()
        assert _leaks(conn.as_uri()) == []

    from erdu_tasks.store.metrics import build_registry

    exposition = generate_latest(build_registry(settings.database_url, settings.redis_url)).decode()
    assert "erdu_" in exposition and _leaks(exposition) == []


def test_a_log_line_never_shows_a_registered_secret() -> None:
    from erdu_tasks.celery_ext import logs

    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.configure("INFO", "json", stream)
    logs.register_secrets([SECRETS["write"], "abc"])   # too short to redact: ordinary words stay
    log = logging.getLogger("erdu.test")
    log.info("connecting with %s to abc", SECRETS["write"])
    try:
        raise RuntimeError(f"auth failed for {SECRETS['write']}")
    except RuntimeError:
        log.exception("boom", extra={"args_seen": [SECRETS["write"]]})
    text = stream.getvalue()
    root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    assert SECRETS["write"] not in text and "***" in text and "to abc" in text


def test_a_worker_on_password_protected_services_logs_no_secret(locked_redis, stack_factory) -> None:
    redis_url = f"redis://:{SECRETS['redis']}@127.0.0.1:{locked_redis.port}/4"
    stack = stack_factory(redis_url=redis_url)
    database_url = stack.database_url.replace("postgresql://postgres@", f"postgresql://postgres:{SECRETS['db']}@")
    stack.env.update(_env(redis_url, database_url))
    worker = stack.start("ingest")
    stack.send_event({"message": f"Login failed for token {SECRETS['write']}", "service": "orders"})
    wait_for(lambda: incident_rows(stack.database_url, "SELECT id FROM incidents"), 30, what="the event ingested")
    # A broker client asking the worker for its configuration gets nothing (remote control refuses `conf`).
    assert not stack.client.control.inspect(timeout=3).conf()
    log = worker.log_path.read_text(errors="replace")
    assert "ready." in log
    assert _leaks(log) == [], log[-2000:]
    assert redis.Redis.from_url(redis_url).ping()
