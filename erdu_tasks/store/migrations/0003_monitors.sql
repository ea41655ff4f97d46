-- Monitors: where the log tailer is in each file, and the state of probes and health checks.

-- One row per tailed file (by the path that was watched). The file is identified by (dev, ino)
-- plus a hash of its first head_len bytes, so truncation and replacement are noticed; byte_offset
-- only moves in the transaction that stores the events read before it (exactly once).
CREATE TABLE tail_positions (
    path        text PRIMARY KEY,
    watch       text NOT NULL,
    dev         numeric(20, 0),
    ino         numeric(20, 0),
    byte_offset bigint NOT NULL DEFAULT 0 CHECK (byte_offset >= 0),
    head_len    integer NOT NULL DEFAULT 0,
    head_hash   text NOT NULL DEFAULT '',
    skipping    boolean NOT NULL DEFAULT false,   -- inside a capped long line: skip to its newline
    held_since  timestamptz,                      -- waiting for a partial line / unfinished traceback
    rotated     jsonb,                            -- the previous file after a rotation, still read a while
    version     bigint NOT NULL DEFAULT 0,        -- compare-and-set: two scanners never both commit
    lines       bigint NOT NULL DEFAULT 0,
    events      bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tail_positions_watch ON tail_positions (watch);

-- Watched paths/globs: files present at the first scan start at their end, later ones at 0.
CREATE TABLE tail_watches (
    pattern       text PRIMARY KEY,
    first_scan_at timestamptz NOT NULL DEFAULT now()
);

-- Probes, system thresholds, worker presence, queue backlogs: consecutive failures, since when,
-- whether an incident was opened and how often it recovered.
CREATE TABLE monitor_state (
    key             text PRIMARY KEY,
    failures        integer NOT NULL DEFAULT 0,
    breached_since  timestamptz,
    firing          boolean NOT NULL DEFAULT false,
    incident_id     text REFERENCES incidents(id) ON DELETE SET NULL,
    recoveries      integer NOT NULL DEFAULT 0,
    last_status     text,
    last_detail     text,
    last_checked_at timestamptz,
    last_ok_at      timestamptz,
    last_failure_at timestamptz
);

-- Cursors over append-only tables (e.g. the failed_tasks rows already reported).
CREATE TABLE monitor_cursors (
    name       text PRIMARY KEY,
    last_id    bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
