-- Heartbeats (dead-man switches): each must ping within period + grace. A late one opens an
-- incident through the ingest entry (dedup key heartbeat:NAME); its next ping resolves it.
-- ERDU's own beat writes the row 'erdu:beat' (the reconciler), which the API watches.
CREATE TABLE heartbeats (
    name           text PRIMARY KEY,
    period_seconds double precision NOT NULL CHECK (period_seconds > 0),
    grace_seconds  double precision NOT NULL CHECK (grace_seconds >= 0),
    declared       boolean NOT NULL DEFAULT false,     -- from the settings (else created by its first ping)
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_seen      timestamptz,
    pings          bigint NOT NULL DEFAULT 0,
    last_source    text,
    state          text NOT NULL DEFAULT 'new' CHECK (state IN ('new', 'up', 'late')),
    late_since     timestamptz,
    incident_id    text REFERENCES incidents(id) ON DELETE SET NULL
);
