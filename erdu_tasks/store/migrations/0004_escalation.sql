-- Escalation: durable runs and steps with due times, one row per delivery attempt,
-- silences / maintenance windows, and holds (incidents kept quiet by a silence or a parent).

-- One escalation of one incident. A new escalation (after a retry, a silence, a released
-- parent) is a new run; its started_at is part of every step key of that run.
CREATE TABLE escalation_runs (
    incident_id  text NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
    started_at   timestamptz NOT NULL,
    reason       text NOT NULL,
    stage        text,
    state        text NOT NULL DEFAULT 'active',
    level        integer NOT NULL DEFAULT 0,
    next_at      timestamptz,               -- when the sweeper looks at this run again
    stopped_at   timestamptz,
    stop_reason  text,
    PRIMARY KEY (incident_id, started_at)
);
-- At most one live run per incident; starting a new one stops the old one first.
CREATE UNIQUE INDEX escalation_runs_one_live ON escalation_runs (incident_id) WHERE stopped_at IS NULL;
CREATE INDEX escalation_runs_due ON escalation_runs (next_at) WHERE stopped_at IS NULL AND next_at IS NOT NULL;

-- A claimed notification: trigger steps (level >= 1, repeat >= 0), the resolve notice of an
-- incident (level 0) and per-channel digests (no incident). Inserting the row with
-- ON CONFLICT DO NOTHING is the claim: a doubled or redelivered sweeper run sends nothing twice.
CREATE TABLE escalation_steps (
    id           bigserial PRIMARY KEY,
    step_key     text NOT NULL UNIQUE,
    kind         text NOT NULL CHECK (kind IN ('trigger', 'resolve', 'digest')),
    incident_id  text REFERENCES incidents(id) ON DELETE CASCADE,
    started_at   timestamptz,
    level        integer NOT NULL DEFAULT 0,
    repeat       integer NOT NULL DEFAULT 0,
    channels     jsonb NOT NULL,
    payload      jsonb NOT NULL DEFAULT '{}',
    due_at       timestamptz NOT NULL,
    sent_at      timestamptz NOT NULL,       -- when it was claimed for sending
    next_at      timestamptz,                -- when an unfinished step is worked on again
    done_at      timestamptz,                -- every channel settled (sent, held or gave up)
    failed_at    timestamptz,                -- ... and none of them delivered
    UNIQUE (incident_id, started_at, level, repeat)
);
CREATE INDEX escalation_steps_open ON escalation_steps (next_at) WHERE done_at IS NULL;
CREATE INDEX escalation_steps_incident ON escalation_steps (incident_id, started_at);

-- One row per delivery attempt of one step on one channel; inserting it claims the attempt.
CREATE TABLE deliveries (
    id            bigserial PRIMARY KEY,
    step_id       bigint NOT NULL REFERENCES escalation_steps(id) ON DELETE CASCADE,
    incident_id   text REFERENCES incidents(id) ON DELETE CASCADE,
    channel       text NOT NULL,
    attempt       integer NOT NULL CHECK (attempt >= 1),
    claimed_at    timestamptz NOT NULL,
    at            timestamptz,               -- when the attempt finished (null: in flight)
    ok            boolean,
    held          boolean NOT NULL DEFAULT false,   -- held back by the channel's rate limit
    gave_up       boolean NOT NULL DEFAULT false,
    detail        text NOT NULL DEFAULT '',
    permanent     boolean NOT NULL DEFAULT false,
    response_code integer,
    retry_at      timestamptz,               -- when the next attempt is due
    UNIQUE (step_id, channel, attempt)
);
CREATE INDEX deliveries_incident ON deliveries (incident_id, id);
CREATE INDEX deliveries_held ON deliveries (channel, at) WHERE held;

-- Silences and maintenance windows: matchers on service, fingerprint, tags, labels, severity.
CREATE TABLE silences (
    id          text PRIMARY KEY,
    matchers    jsonb NOT NULL,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    author      text NOT NULL,
    comment     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expired_at  timestamptz,
    expired_by  text,
    CHECK (ends_at > starts_at)
);
CREATE INDEX silences_live ON silences (ends_at) WHERE expired_at IS NULL;

-- An incident kept quiet: by a silence (no fix, no notification) or by an open parent
-- (inhibition: not escalated on its own). `stage` is what resumes when the hold ends.
CREATE TABLE incident_holds (
    id          bigserial PRIMARY KEY,
    incident_id text NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('silence', 'inhibit')),
    silence_id  text REFERENCES silences(id),
    parent_id   text REFERENCES incidents(id),
    stage       text NOT NULL,
    held_at     timestamptz NOT NULL,
    until       timestamptz,
    released_at timestamptz,
    release_reason text
);
CREATE UNIQUE INDEX incident_holds_one_live ON incident_holds (incident_id) WHERE released_at IS NULL;
CREATE INDEX incident_holds_parent ON incident_holds (parent_id) WHERE released_at IS NULL;
CREATE INDEX incidents_parent ON incidents (parent_id) WHERE parent_id IS NOT NULL;
