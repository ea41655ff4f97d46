-- Core schema: incidents, their timeline, learned patterns and the pipeline's bookkeeping.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE incidents (
    id                  text PRIMARY KEY,
    fingerprint         text NOT NULL,
    template            text NOT NULL DEFAULT '',
    title               text NOT NULL,
    description         text NOT NULL DEFAULT '',
    severity            text NOT NULL CHECK (severity IN ('P1','P2','P3','P4','P5')),
    status              text NOT NULL CHECK (status IN ('detected','assigned','investigating','fixing',
                            'awaiting_approval','resolved','closed','escalated','acknowledged')),
    source              text NOT NULL,
    service             text,
    host                text,
    affected_services   jsonb NOT NULL DEFAULT '[]',
    tags                jsonb NOT NULL DEFAULT '[]',
    labels              jsonb NOT NULL DEFAULT '{}',
    error_details       jsonb NOT NULL DEFAULT '{}',
    samples             jsonb NOT NULL DEFAULT '[]',
    occurrences         bigint NOT NULL DEFAULT 1 CHECK (occurrences >= 1),
    created_at          timestamptz NOT NULL DEFAULT now(),
    last_seen           timestamptz NOT NULL DEFAULT now(),
    status_changed_at   timestamptz NOT NULL DEFAULT now(),
    acknowledged_at     timestamptz,
    resolved_at         timestamptz,
    escalated_at        timestamptz,
    closed_at           timestamptz,
    assessment          jsonb NOT NULL DEFAULT '{}',
    diagnosis           jsonb NOT NULL DEFAULT '{}',
    fix                 jsonb NOT NULL DEFAULT '{}',
    root_cause          text,
    resolution_actions  jsonb NOT NULL DEFAULT '[]',
    lessons_learned     jsonb NOT NULL DEFAULT '[]',
    follow_ups          jsonb NOT NULL DEFAULT '[]',
    resolved_by         text,
    auto_resolved       boolean NOT NULL DEFAULT false,
    parent_id           text REFERENCES incidents(id),
    reopened_from       text REFERENCES incidents(id),
    report_path         text
);

-- One open incident per fingerprint, whichever worker gets there first.
CREATE UNIQUE INDEX incidents_one_open_per_fingerprint
    ON incidents (fingerprint) WHERE status NOT IN ('resolved', 'closed');
CREATE INDEX incidents_status_changed ON incidents (status, status_changed_at);
CREATE INDEX incidents_created ON incidents (created_at);
CREATE INDEX incidents_fingerprint ON incidents (fingerprint, created_at);
CREATE INDEX incidents_title_trgm ON incidents USING gin (title gin_trgm_ops);
CREATE INDEX incidents_template_trgm ON incidents USING gin (template gin_trgm_ops);

CREATE TABLE incident_timeline (
    id          bigserial PRIMARY KEY,
    incident_id text NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text NOT NULL,
    worker      text,
    from_status text,
    to_status   text,
    what        text NOT NULL,
    details     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX incident_timeline_incident ON incident_timeline (incident_id, id);

-- What ERDU has learned per fingerprint.
CREATE TABLE error_patterns (
    fingerprint           text PRIMARY KEY,
    template              text NOT NULL DEFAULT '',
    title                 text NOT NULL DEFAULT '',
    occurrences           bigint NOT NULL DEFAULT 0,
    incidents             integer NOT NULL DEFAULT 0,
    resolved              integer NOT NULL DEFAULT 0,
    escalated             integer NOT NULL DEFAULT 0,
    auto_resolved         integer NOT NULL DEFAULT 0,
    human_resolved        integer NOT NULL DEFAULT 0,
    total_resolve_seconds double precision NOT NULL DEFAULT 0,
    first_seen            timestamptz NOT NULL DEFAULT now(),
    last_seen             timestamptz NOT NULL DEFAULT now()
);

-- Per (fingerprint, runbook): how often it was tried and how often its validation passed.
CREATE TABLE pattern_action_stats (
    fingerprint     text NOT NULL,
    runbook         text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    successes       integer NOT NULL DEFAULT 0 CHECK (successes <= attempts),
    last_attempt_at timestamptz,
    last_outcome    text,
    PRIMARY KEY (fingerprint, runbook)
);

CREATE TABLE escalations (
    id          bigserial PRIMARY KEY,
    incident_id text NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
    level       integer NOT NULL DEFAULT 1,
    reason      text NOT NULL,
    stage       text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX escalations_incident ON escalations (incident_id);

-- Stage tasks that failed for good; `erdu failed retry` re-drives them.
CREATE TABLE failed_tasks (
    id          bigserial PRIMARY KEY,
    task_id     text NOT NULL,
    task_name   text NOT NULL,
    stage       text,
    incident_id text REFERENCES incidents(id) ON DELETE CASCADE,
    error       text NOT NULL,
    worker      text,
    failed_at   timestamptz NOT NULL DEFAULT now(),
    retried_at  timestamptz
);
CREATE INDEX failed_tasks_open ON failed_tasks (failed_at) WHERE retried_at IS NULL;

-- Events refused as malformed, kept so nothing is silently lost.
CREATE TABLE rejected_events (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    source      text,
    error       text NOT NULL,
    payload     text NOT NULL
);

-- Starts and finishes per (incident, stage): the gap counts worker crashes (poison protection).
CREATE TABLE stage_runs (
    incident_id text NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
    stage       text NOT NULL,
    starts      integer NOT NULL DEFAULT 0,
    finishes    integer NOT NULL DEFAULT 0,
    redrives    integer NOT NULL DEFAULT 0,
    PRIMARY KEY (incident_id, stage)
);

-- One row per runbook step run: the idempotency key that stops a redelivered fix acting twice.
CREATE TABLE action_runs (
    incident_id text NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
    step_key    text NOT NULL,
    runbook     text NOT NULL,
    action      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    ok          boolean,
    result      jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (incident_id, step_key)
);
