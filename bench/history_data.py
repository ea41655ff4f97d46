"""Realistic incident history, loaded in a few statements (INSERT ... SELECT generate_series).

Used by bench/history.py and by the tests that check query plans at a realistic size.

Closed incidents spread over `days` days: 2,000 error patterns (20 components x 25 failures x 4
contexts, each a template with `<*>` holes and one service), drawn with a skew so a few patterns
recur a lot; titles are the template with numbers filled in; severities about 2 % P1, 10 % P2,
60 % P3, 20 % P4, 8 % P5; resolved within two hours, a third acknowledged by a person, a tenth
escalated. Each closed incident has the five status changes of the full path on its timeline
(assigned, investigating, fixing, resolved, closed) and one runbook run. Open incidents have fingerprints of their
own (one open incident per fingerprint), a tenth of them P1, spread over the open statuses.

Row triggers are skipped while loading (session_replication_role = replica) and the rollups and the
patterns are rebuilt once afterwards (`erdu_rollups_rebuild()`, `erdu_incident_patterns_rebuild()`),
which is what a migration does on an existing database; the indexes are the migrated ones, maintained as rows go in.
"""

from __future__ import annotations

import psycopg
from psycopg.rows import tuple_row

COMPONENTS = ("Database", "Cache", "Queue consumer", "Payment gateway", "Search index", "Auth service",
              "Scheduler", "Worker pool", "Disk", "Certificate", "DNS resolver", "Load balancer", "Replica",
              "Storage volume", "Mail relay", "Session store", "Image resizer", "Webhook sender", "Billing job",
              "Feature flags")
FAILURES = ("connection failed", "request timed out after <*> ms", "quota exceeded", "returned status <*>",
            "out of memory", "refused connection on port <*>", "replication lag above <*> s", "write failed",
            "not reachable", "expires in <*> days", "corrupted entry <*>", "slow response p99 <*> ms",
            "lock wait timeout", "too many open files", "checksum mismatch in block <*>", "handshake failed",
            "rate limited by upstream", "no space left on device", "deadlock detected", "pool exhausted",
            "invalid response from upstream", "heartbeat missed", "crashed with signal <*>",
            "backlog of <*> messages", "configuration reload failed")
CONTEXTS = ("for tenant <*>", "on host node-<*>", "in region eu-<*>", "after <*> retries")
SERVICES = tuple(f"{name}-{n}" for name in ("orders", "billing", "search", "auth", "mail", "media") for n in range(10))
PATTERNS = len(COMPONENTS) * len(FAILURES) * len(CONTEXTS)
SOURCES = ("log", "probe", "api", "alertmanager")


def _array(values: tuple[str, ...]) -> str:
    return "ARRAY[" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + "]"


def _pattern_sql(p: str) -> str:
    """SQL for pattern p's template (p in 0..PATTERNS-1)."""
    return (f"({_array(COMPONENTS)})[mod({p}, 20) + 1] || ' ' || ({_array(FAILURES)})[mod({p} / 20, 25) + 1]"
            f" || ' ' || ({_array(CONTEXTS)})[mod({p} / 500, 4) + 1]")


def load(conn: psycopg.Connection, *, closed: int, open_: int = 0, days: float = 730.0, seed: float = 0.42,
         start: int = 0, rebuild_indexes: bool = True, timeline: bool = True) -> None:
    """Insert `closed` closed incidents (with timelines) and `open_` open ones; then rebuild the rollups, ANALYZE.

    rebuild_indexes: drop the secondary indexes of incidents and incident_timeline first and create them
    again afterwards from their own definitions (pg_get_indexdef), which is several times faster than
    maintaining trigram indexes row by row; the indexes are the migrated ones either way.
    timeline: also write the five status changes of each closed incident (five rows per incident).
    """
    conn.execute("SELECT setseed(%s)", (seed,))
    indexes = _secondary_indexes(conn) if rebuild_indexes and closed + open_ else []
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    conn.execute("SET session_replication_role = replica")
    try:
        if closed:
            _load_closed(conn, closed, days, start, timeline)
        if open_:
            _load_open(conn, open_, start)
    finally:
        conn.execute("SET session_replication_role = DEFAULT")
    conn.execute("SET maintenance_work_mem = '256MB'")
    for _, definition in indexes:
        conn.execute(definition)
    plain = conn.cursor(row_factory=tuple_row)
    if plain.execute("SELECT to_regproc('erdu_rollups_rebuild') IS NOT NULL").fetchone()[0]:
        conn.execute("SELECT erdu_rollups_rebuild()")
    if plain.execute("SELECT to_regproc('erdu_incident_patterns_rebuild') IS NOT NULL").fetchone()[0]:
        conn.execute("SELECT erdu_incident_patterns_rebuild()")
    tables = ["incidents", "incident_timeline", "runbook_runs"]
    if plain.execute("SELECT to_regclass('incident_patterns') IS NOT NULL").fetchone()[0]:
        tables.append("incident_patterns")
    for table in tables:
        conn.execute(f"ANALYZE {table}")


def _secondary_indexes(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(name, CREATE INDEX statement) of the indexes of incidents and incident_timeline that back no constraint."""
    rows = conn.cursor(row_factory=tuple_row).execute(
        """
        SELECT c.relname, pg_get_indexdef(x.indexrelid) FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
        WHERE x.indrelid IN ('incidents'::regclass, 'incident_timeline'::regclass)
          AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = x.indexrelid)
        ORDER BY c.relname
        """
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def _load_closed(conn: psycopg.Connection, n: int, days: float, start: int, timeline: bool) -> None:
    conn.execute(
        f"""
        CREATE TEMP TABLE _load ON COMMIT DROP AS
        SELECT i, p, created,
               created + make_interval(secs => 60 + r1 * 7140) AS resolved,
               CASE WHEN r2 < 0.33 THEN created + make_interval(secs => 30 + r1 * 900) END AS acked,
               CASE WHEN r2 < 0.10 THEN created + make_interval(secs => 20) END AS escalated,
               r2, r3
        FROM (SELECT i, floor(power(random(), 2.5) * {PATTERNS})::int AS p,
                     now() - make_interval(secs => random() * %(span)s) AS created,
                     random() AS r1, random() AS r2, random() AS r3
              FROM generate_series(%(start)s + 1, %(start)s + %(n)s) AS i) AS g
        """,
        {"n": n, "span": days * 86400.0, "start": start},
    )
    conn.execute(
        f"""
        INSERT INTO incidents (id, fingerprint, template, title, description, severity, status, source, service,
                               affected_services, occurrences, created_at, last_seen, status_changed_at,
                               acknowledged_at, resolved_at, escalated_at, closed_at, root_cause, resolved_by,
                               auto_resolved, fix, diagnosis)
        SELECT 'INC-' || to_char(created, 'YYYYMMDDHH24MISS') || '-' || lpad(to_hex(i), 8, '0'),
               md5('pattern-' || p), tpl, title, title,
               CASE WHEN r3 < 0.02 THEN 'P1' WHEN r3 < 0.12 THEN 'P2' WHEN r3 < 0.72 THEN 'P3'
                    WHEN r3 < 0.92 THEN 'P4' ELSE 'P5' END,
               'closed', ({_array(SOURCES)})[mod(i, 4) + 1], svc, jsonb_build_array(svc), 1 + mod(i, 7),
               created, created, resolved + interval '2 seconds', acked, resolved, escalated,
               resolved + interval '2 seconds',
               CASE WHEN r2 > 0.5 THEN 'cause of pattern ' || p END,
               CASE WHEN r2 < 0.2 THEN 'person:alice' ELSE 'runbook:restart-' || mod(p, 40) END,
               r2 >= 0.6, jsonb_build_object('runbook', 'restart-' || mod(p, 40)), '{{}}'::jsonb
        FROM (SELECT *, {_pattern_sql('p')} AS tpl, ({_array(SERVICES)})[mod(p, 60) + 1] AS svc FROM _load) AS x
        CROSS JOIN LATERAL (SELECT replace(tpl, '<*>', mod(i::bigint * 7919, 9973)::text) AS title) AS t
        """
    )
    if timeline:
        _load_timeline(conn)
    conn.execute(
        f"""
        INSERT INTO runbook_runs (incident_id, attempt, runbook, service, started_at, outcome)
        SELECT 'INC-' || to_char(created, 'YYYYMMDDHH24MISS') || '-' || lpad(to_hex(i), 8, '0'), 1,
               'restart-' || mod(p, 40), ({_array(SERVICES)})[mod(p, 60) + 1], created + interval '30 seconds',
               'success'
        FROM _load
        """
    )
    conn.execute("DROP TABLE _load")


def _load_timeline(conn: psycopg.Connection) -> None:
    conn.execute(
        """
        INSERT INTO incident_timeline (incident_id, at, actor, worker, from_status, to_status, what)
        SELECT 'INC-' || to_char(created, 'YYYYMMDDHH24MISS') || '-' || lpad(to_hex(i), 8, '0'),
               created + (resolved - created) * s.k / 4.0, s.actor, 'bench@host', s.from_status, s.to_status,
               s.what
        FROM _load
        CROSS JOIN (VALUES (0.02, 'commander', 'detected', 'assigned', 'assessed P3: automate'),
                           (0.1, 'diagnostician', 'assigned', 'investigating', 'diagnosed'),
                           (0.3, 'fixer', 'investigating', 'fixing', 'fixing with a runbook'),
                           (4.0, 'fixer', 'fixing', 'resolved', 'validated'),
                           (4.01, 'resolver', 'resolved', 'closed', 'closed; report written'))
             AS s(k, actor, from_status, to_status, what)
        ORDER BY 1, s.k
        """
    )


def _load_open(conn: psycopg.Connection, n: int, start: int) -> None:
    conn.execute(
        f"""
        INSERT INTO incidents (id, fingerprint, template, title, description, severity, status, source, service,
                               affected_services, created_at, last_seen, status_changed_at, escalated_at)
        SELECT 'INC-' || to_char(created, 'YYYYMMDDHH24MISS') || '-o' || lpad(to_hex(i), 7, '0'),
               md5('open-' || i), tpl, title, title,
               CASE WHEN mod(i, 10) = 0 THEN 'P1' WHEN mod(i, 10) < 4 THEN 'P2' ELSE 'P3' END,
               (ARRAY['detected', 'assigned', 'investigating', 'fixing', 'escalated', 'acknowledged'])[mod(i, 6) + 1],
               'log', svc, jsonb_build_array(svc), created, created, created,
               CASE WHEN mod(i, 6) >= 4 THEN created END
        FROM (SELECT i, now() - make_interval(secs => random() * 86400) AS created,
                     {_pattern_sql(f'mod(i, {PATTERNS})')} AS tpl,
                     ({_array(SERVICES)})[mod(i, 60) + 1] AS svc
              FROM generate_series(%(start)s + 1, %(start)s + %(n)s) AS i) AS g
        CROSS JOIN LATERAL (SELECT replace(tpl, '<*>', mod(i, 9973)::text) AS title) AS t
        """,
        {"n": n, "start": start},
    )
