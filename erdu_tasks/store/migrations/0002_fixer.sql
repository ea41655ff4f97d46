-- Runbook executions, for rate limits ("at most 3 restarts an hour per service") and approvals.
CREATE TABLE runbook_runs (
    id          bigserial PRIMARY KEY,
    incident_id text NOT NULL REFERENCES incidents(id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    runbook     text NOT NULL,
    service     text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    outcome     text,
    UNIQUE (incident_id, attempt)
);
CREATE INDEX runbook_runs_recent ON runbook_runs (runbook, service, started_at);

-- When the owed stage of an incident was last published (by the pipeline or the reconciler).
ALTER TABLE incidents ADD COLUMN driven_at timestamptz;
