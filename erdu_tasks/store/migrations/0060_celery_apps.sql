-- The team's own Celery apps (monitors.celery_apps): their task history, their workers, and an audit of
-- what people and runbooks did to them (retries, remote control, queue moves).

-- One row per (app, task id): the latest of what its events said. args/kwargs are the reprs the task
-- events carry, kept as text (never evaluated); retried_from/retried_as link a retry to its original.
CREATE TABLE celery_app_tasks (
    app          text NOT NULL,
    task_id      text NOT NULL,
    name         text,
    state        text NOT NULL,
    args         text,
    kwargs       text,
    worker       text,
    exception    text,             -- the exception's type, e.g. ValueError
    error        text,             -- the exception as the event stated it
    traceback    text,
    queue        text,
    routing_key  text,
    exchange     text,
    root_id      text,
    parent_id    text,
    retries      integer NOT NULL DEFAULT 0,
    executions   integer NOT NULL DEFAULT 0,   -- task-started events seen (2+ without a retry: ran twice)
    eta          timestamptz,
    sent_at      timestamptz,
    received_at  timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz,
    runtime      double precision,
    retried_from text,
    retried_as   text,
    retried_by   text,
    retried_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app, task_id)
);
CREATE INDEX celery_app_tasks_name ON celery_app_tasks (app, name, updated_at DESC);
CREATE INDEX celery_app_tasks_worker ON celery_app_tasks (worker, updated_at DESC);
CREATE INDEX celery_app_tasks_exception ON celery_app_tasks (exception, updated_at DESC) WHERE exception IS NOT NULL;
CREATE INDEX celery_app_tasks_updated ON celery_app_tasks (updated_at);
CREATE INDEX celery_app_tasks_task_id ON celery_app_tasks (task_id text_pattern_ops);
-- Argument search (ILIKE '%text%') reads a trigram index instead of every row.
CREATE INDEX celery_app_tasks_args_trgm ON celery_app_tasks
    USING gin ((coalesce(args, '') || ' ' || coalesce(kwargs, '')) gin_trgm_ops);

-- The workers each app's events have shown, as the watcher last saw them.
CREATE TABLE celery_app_workers (
    app            text NOT NULL,
    hostname       text NOT NULL,
    state          text NOT NULL,          -- online | offline (said goodbye) | lost (heartbeats stopped)
    first_seen     timestamptz NOT NULL DEFAULT now(),
    last_heartbeat timestamptz,
    offline_at     timestamptz,
    active         integer NOT NULL DEFAULT 0,
    processed      bigint NOT NULL DEFAULT 0,
    sw_ident       text,
    sw_ver         text,
    loadavg        jsonb,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app, hostname)
);

-- Who did what to a Celery app, and how it went.
CREATE TABLE celery_app_actions (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    app      text NOT NULL,
    action   text NOT NULL,
    target   text,
    by       text NOT NULL,
    note     text,
    ok       boolean NOT NULL,
    details  jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX celery_app_actions_app ON celery_app_actions (app, at DESC);
