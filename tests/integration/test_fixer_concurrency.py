"""Concurrent fixers: fixes of one service are planned one at a time, so a rate limit holds however many
fixer children or processes there are; fixes of other services never wait."""

from __future__ import annotations

import threading
import time

import psycopg

from erdu_tasks.fixer.engine import serialize_fixes_of


def test_a_second_fix_of_the_same_service_waits_for_the_first_plan_to_commit(fresh_database_url):
    first = psycopg.connect(fresh_database_url)
    second = psycopg.connect(fresh_database_url)
    other = psycopg.connect(fresh_database_url)
    try:
        serialize_fixes_of(first, "api")
        got: dict[str, float] = {}

        def plan(conn, service, name):
            serialize_fixes_of(conn, service)
            got[name] = time.monotonic()
            conn.commit()

        waiting = threading.Thread(target=plan, args=(second, "api", "same"))
        free = threading.Thread(target=plan, args=(other, "billing", "other"))
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


def test_the_lock_taken_by_the_incident_is_its_service_s_lock(fresh_database_url):
    """The fix task takes the lock from the incident's row, before it has read the incident: it must be the
    very lock serialize_fixes_of takes by the service's name (and the lock of no service for none)."""
    from erdu_tasks.fixer.engine import serialize_fixes_of_incident

    with psycopg.connect(fresh_database_url, autocommit=True) as setup:
        for incident_id, service in (("INC-1", "api"), ("INC-2", None), ("INC-3", "billing")):
            setup.execute("INSERT INTO incidents (id, fingerprint, title, severity, status, source, service)"
                          " VALUES (%s, %s, 't', 'P2', 'fixing', 'test', %s)", (incident_id, incident_id, service))
    holder = psycopg.connect(fresh_database_url)
    waiters = {name: psycopg.connect(fresh_database_url) for name in ("INC-1", "INC-2", "INC-3")}
    try:
        serialize_fixes_of(holder, "api")
        serialize_fixes_of(holder, None)
        got: dict[str, float] = {}

        def plan(name):
            serialize_fixes_of_incident(waiters[name], name)
            got[name] = time.monotonic()
            waiters[name].commit()

        threads = {name: threading.Thread(target=plan, args=(name,)) for name in waiters}
        for thread in threads.values():
            thread.start()
        threads["INC-3"].join(10)
        assert "INC-3" in got                  # billing's lock is another lock
        threads["INC-1"].join(0.5)
        assert "INC-1" not in got and "INC-2" not in got   # api's, and no service's, are held
        released = time.monotonic()
        holder.commit()
        for name in ("INC-1", "INC-2"):
            threads[name].join(10)
            assert got[name] >= released
    finally:
        for conn in (holder, *waiters.values()):
            conn.close()
