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
