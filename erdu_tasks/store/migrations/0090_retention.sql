-- Retention: `erdu prune` (and beat) archive and delete closed incidents past the retention period.

-- A pruned incident may be the parent, the earlier incident or the inhibiting parent of a later one:
-- the later one keeps its own record and loses only the link.
ALTER TABLE incidents DROP CONSTRAINT IF EXISTS incidents_parent_id_fkey,
    ADD CONSTRAINT incidents_parent_id_fkey FOREIGN KEY (parent_id) REFERENCES incidents(id) ON DELETE SET NULL;
ALTER TABLE incidents DROP CONSTRAINT IF EXISTS incidents_reopened_from_fkey,
    ADD CONSTRAINT incidents_reopened_from_fkey FOREIGN KEY (reopened_from) REFERENCES incidents(id) ON DELETE SET NULL;
ALTER TABLE incident_holds DROP CONSTRAINT IF EXISTS incident_holds_parent_id_fkey,
    ADD CONSTRAINT incident_holds_parent_id_fkey FOREIGN KEY (parent_id) REFERENCES incidents(id) ON DELETE SET NULL;

-- The prune's candidates, oldest close first: closed incidents by the time they closed.
CREATE INDEX IF NOT EXISTS incidents_closed_at ON incidents (closed_at, id) WHERE status = 'closed';

-- A prune sets erdu.pruning = 'on' for its transaction: the rows it deletes stay counted in the rollups
-- (/metrics, `erdu stats`, per-fingerprint totals), which therefore count every incident there ever was.
CREATE OR REPLACE FUNCTION erdu_pruning() RETURNS boolean LANGUAGE sql STABLE AS
$$ SELECT coalesce(current_setting('erdu.pruning', true), '') = 'on' $$;

CREATE OR REPLACE FUNCTION erdu_incidents_rollup_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM erdu_rollup_incident(NULL, NEW);
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM erdu_rollup_incident(OLD, NEW);
    ELSIF NOT erdu_pruning() THEN
        PERFORM erdu_rollup_incident(OLD, NULL);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION erdu_timeline_unstage_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF erdu_pruning() THEN
        RETURN NULL;
    END IF;
    UPDATE duration_buckets SET n = n - 1, total = total - OLD.stage_seconds
    WHERE metric = 'stage' AND label = OLD.actor AND bucket = width_bucket(OLD.stage_seconds, erdu_stage_bounds())
      AND shard = (hashtext(OLD.incident_id) & 7)::smallint;
    RETURN NULL;
END
$$;

CREATE TABLE prune_runs (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL DEFAULT now(),
    by           text NOT NULL,
    cutoff       timestamptz,
    incidents    bigint NOT NULL DEFAULT 0,
    timeline     bigint NOT NULL DEFAULT 0,
    receipts     bigint NOT NULL DEFAULT 0,
    rejected     bigint NOT NULL DEFAULT 0,
    archive      text
);

CREATE INDEX IF NOT EXISTS rejected_events_received ON rejected_events (received_at);
