"""Failover URLs: sentinel:// for every Redis client and the broker, libpq multi-host URLs' errors."""

from __future__ import annotations

import pytest

from erdu_tasks.celery_ext.broker import broker_url, password_for, without_password
from erdu_tasks.errors import ConfigError
from erdu_tasks.redisconn import SentinelUrl, parse_sentinel
from erdu_tasks.settings import load_settings, secret_values
from erdu_tasks.store.db import failure_reason


@pytest.mark.parametrize("url, expected", [
    ("sentinel://h1:26379;h2:26380/mymaster/0", SentinelUrl((("h1", 26379), ("h2", 26380)), "mymaster", 0)),
    ("sentinel://h1;h2;h3/erdu", SentinelUrl((("h1", 26379), ("h2", 26379), ("h3", 26379)), "erdu", 0)),
    ("sentinel://h1:1;sentinel://h2:2/m/3", SentinelUrl((("h1", 1), ("h2", 2)), "m", 3)),   # kombu's form
    ("sentinel://:s%40cret@[::1]:26379;h2/m/1", SentinelUrl((("::1", 26379), ("h2", 26379)), "m", 1, None, "s@cret")),
    ("sentinel://app:pw@h1/m/2", SentinelUrl((("h1", 26379),), "m", 2, "app", "pw")),
])
def test_it_reads_the_sentinels_the_master_and_the_database(url, expected):
    assert parse_sentinel(url) == expected


@pytest.mark.parametrize("url, says", [
    ("sentinel://h1:26379;h2:26379", "names the master"),
    ("sentinel://h1:26379/0/mymaster", "master's name comes first"),
    ("sentinel://h1:26379/m/0/1", "only a database number"),
    ("sentinel://h1:26379/m/x", "only a database number"),
    ("sentinel://h1:26379;;h2/m", "empty sentinel address"),
    ("sentinel://h1:99999/m", "bad sentinel port"),
    ("sentinel://h1:abc/m", "bad sentinel port"),
    ("sentinel://h1;u:p@h2/m", "first sentinel only"),
    ("sentinel://h1/a;h2/b", "name one master"),
    ("sentinel://h1/m?master_name=x", "no spaces, query"),
    ("sentinel://h1 /m", "no spaces, query"),
])
def test_a_bad_sentinel_url_is_refused_saying_what_is_wrong(url, says):
    with pytest.raises(ValueError, match=says):
        parse_sentinel(url)


def test_the_broker_gets_kombus_form_and_the_master_name_and_no_password_in_its_url():
    url, options = broker_url("sentinel://app:pw@h1:26379;h2:26380/mymaster/2")
    assert url == "sentinel://app:pw@h1:26379/2;sentinel://app:pw@h2:26380/2"
    assert options == {"master_name": "mymaster"}
    shown = without_password(url)
    assert "pw" not in shown and shown == "sentinel://app@h1:26379/2;sentinel://app@h2:26380/2"
    # kombu moves to the next sentinel when it reconnects: each one gets the password back.
    assert password_for("h1", 26379, "app") == password_for("h2", 26380, "app") == "pw"
    assert broker_url("redis://h/0") == ("redis://h/0", {})


def test_settings_refuse_a_sentinel_url_without_master_and_hide_its_password(monkeypatch):
    monkeypatch.setenv("ERDU_REDIS_URL", "sentinel://h1;h2")
    with pytest.raises(ConfigError, match="redis_url: a sentinel URL names the master"):
        load_settings()
    monkeypatch.setenv("ERDU_REDIS_URL", "sentinel://:hunter22@h1;h2/m/0")
    monkeypatch.setenv("ERDU_CACHE_REDIS_URL", "sentinel://h1;h2/cache/1")
    settings = load_settings()
    assert "hunter22" not in repr(settings) and "hunter22" in secret_values(settings)


def test_a_multi_host_failure_names_every_hosts_reason():
    import psycopg

    text = ('connection failed: connection to server at "10.0.0.2", port 5433 failed: Connection refused\n'
            "\tIs the server running on that host and accepting TCP/IP connections?\n"
            "Multiple connection attempts failed. All failures were:\n"
            "- host: '10.0.0.1', port: '5432', hostaddr: '10.0.0.1': connection failed: connection to server at"
            ' "10.0.0.1", port 5432 failed: FATAL:  database "erdu" does not exist\n'
            "- host: '10.0.0.2', port: '5433', hostaddr: '10.0.0.2': connection failed: connection to server at"
            ' "10.0.0.2", port 5433 failed: Connection refused\n'
            "\tIs the server running on that host and accepting TCP/IP connections?")
    assert failure_reason(psycopg.OperationalError(text)) == (
        '10.0.0.1:5432: FATAL: database "erdu" does not exist; 10.0.0.2:5433: Connection refused')
    assert failure_reason(psycopg.OperationalError("one line\nlast line")) == "last line"


def test_a_runbook_naming_a_bad_sentinel_cache_url_fails_when_it_loads():
    from pydantic import ValidationError

    from erdu_tasks.fixer.actions import clear_cache

    with pytest.raises(ValidationError, match="names the master"):
        clear_cache.Params(pattern="sessions:*", redis_url="sentinel://h1;h2")
    assert clear_cache.Params(pattern="sessions:*", redis_url="sentinel://h1;h2/cache/0").redis_url
    assert clear_cache.safe_url("sentinel://:pw@h1;h2/cache/0") == "sentinel://:***@h1;h2/cache/0"
