"""Concurrent fixers: fixes of one service are planned one at a time, so a rate limit holds however many
fixer children or processes there are; fixes of other services never wait. The lock is taken by Postgres
from the incident's row (the fix task sends it before it has read the incident)."""

from __future__ import annotations

import threading
import time

import psycopg

from erdu_tasks.fixer.engine import serialize_fixes_of


def _incidents(url: str, services: dict[str, str | None]) -> None:
    with psycopg.connect(url, autocommit=True) as setup:
        for incident_id, service in services.items():
            setup.execute("INSERT INTO incidents (id, fingerprint, title, severity, status, source, service)"
                          " VALUES (%s, %s, 't', 'P2', 'fixing', 'test', %s)", (incident_id, incident_id, service))


def test_a_second_fix_of_the_same_service_waits_for_the_first_plan_to_commit(fresh_database_url):
    _incidents(fresh_database_url, {"INC-api-1": "api", "INC-api-2": "api", "INC-billing": "billing"})
    first = psycopg.connect(fresh_database_url)
    second = psycopg.connect(fresh_database_url)
    other = psycopg.connect(fresh_database_url)
    try:
        serialize_fixes_of(first, "INC-api-1")
        got: dict[str, float] = {}

        def plan(conn, incident_id, name):
            serialize_fixes_of(conn, incident_id)
            got[name] = time.monotonic()
            conn.commit()

        waiting = threading.Thread(target=plan, args=(second, "INC-api-2", "same"))
        free = threading.Thread(target=plan, args=(other, "INC-billing", "other"))
        waiting.start()
        free.start()
        free.join(10)
        assert "other" in got            # another service's fix does not wait
        waiting.join(0.5)
        assert "same" not in got         # the same service's does, while the first plan is open
        released = time.monotonic()
        first.commit()
        waiting.join(10)
        assert got["same"] >= released
    finally:
        for conn in (first, second, other):
            conn.close()


def test_fixes_of_incidents_without_a_service_wait_for_each_other(fresh_database_url):
    _incidents(fresh_database_url, {"INC-none-1": None, "INC-none-2": None, "INC-api": "api"})
    holder = psycopg.connect(fresh_database_url)
    waiters = {name: psycopg.connect(fresh_database_url) for name in ("INC-none-2", "INC-api")}
    try:
        serialize_fixes_of(holder, "INC-none-1")
        got: dict[str, float] = {}

        def plan(name):
            serialize_fixes_of(waiters[name], name)
            got[name] = time.monotonic()
            waiters[name].commit()

        threads = {name: threading.Thread(target=plan, args=(name,)) for name in waiters}
        for thread in threads.values():
            thread.start()
        threads["INC-api"].join(10)
        assert "INC-api" in got                 # a service's lock is another lock
        threads["INC-none-2"].join(0.5)
        assert "INC-none-2" not in got          # no service's lock is held
        released = time.monotonic()
        holder.commit()
        threads["INC-none-2"].join(10)
        assert got["INC-none-2"] >= released
    finally:
        for conn in (holder, *waiters.values()):
            conn.close()
