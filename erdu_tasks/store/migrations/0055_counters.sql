-- Counters that never go down, and "automatic" meaning every close without a person.
--
-- incident_totals counts the incidents that exist now, by their current severity and status: a
-- series of it goes down when the commander lowers a severity or an incident is deleted, which a
-- Prometheus counter must never do (rate() and increase() read a drop as a reset). The counters
-- below only ever grow: one row per event kind, labelled by the severity the incident had when it
-- was opened (kept in incidents.opened_severity), written by triggers in the transaction that
-- opens, resolves or closes the incident. A deleted or truncated incident leaves them as they are.

ALTER TABLE incidents ADD COLUMN opened_severity text;
UPDATE incidents SET opened_severity = severity WHERE opened_severity IS NULL;

CREATE TABLE incident_counters (
    counter     text NOT NULL CHECK (counter IN ('opened', 'closed', 'resolved_automation', 'resolved_person')),
    severity    text NOT NULL,   -- the severity at opening
    source      text NOT NULL,
    shard       smallint NOT NULL,
    n           bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (counter, severity, source, shard)
);

CREATE FUNCTION erdu_count(kind text, r incidents) RETURNS void LANGUAGE sql AS $$
    INSERT INTO incident_counters AS c (counter, severity, source, shard, n)
    VALUES (kind, coalesce(r.opened_severity, r.severity), r.source, (hashtext(r.id) & 7)::smallint, 1)
    ON CONFLICT (counter, severity, source, shard) DO UPDATE SET n = c.n + 1
$$;

CREATE FUNCTION erdu_opened_severity_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.opened_severity := NEW.severity;
    RETURN NEW;
END
$$;

CREATE FUNCTION erdu_counters_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM erdu_count('opened', NEW);
        RETURN NULL;
    END IF;
    IF OLD.resolved_at IS NULL AND NEW.resolved_at IS NOT NULL THEN
        PERFORM erdu_count(CASE WHEN coalesce(NEW.resolved_by LIKE 'person:%', false)
                                THEN 'resolved_person' ELSE 'resolved_automation' END, NEW);
    END IF;
    IF OLD.closed_at IS NULL AND NEW.closed_at IS NOT NULL THEN
        PERFORM erdu_count('closed', NEW);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER incidents_opened_severity BEFORE INSERT ON incidents
    FOR EACH ROW EXECUTE FUNCTION erdu_opened_severity_trigger();
CREATE TRIGGER incidents_counters_insert AFTER INSERT ON incidents
    FOR EACH ROW EXECUTE FUNCTION erdu_counters_trigger();
CREATE TRIGGER incidents_counters_update AFTER UPDATE ON incidents
    FOR EACH ROW WHEN ((OLD.resolved_at IS NULL AND NEW.resolved_at IS NOT NULL)
                       OR (OLD.closed_at IS NULL AND NEW.closed_at IS NOT NULL))
    EXECUTE FUNCTION erdu_counters_trigger();

-- The counters recounted from the incidents there now (here: the history already there, counted once).
CREATE FUNCTION erdu_counters_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM incident_counters;
    INSERT INTO incident_counters (counter, severity, source, shard, n)
    SELECT kind, opened_severity, source, (hashtext(id) & 7)::smallint, count(*)
    FROM (SELECT 'opened' AS kind, opened_severity, source, id FROM incidents
          UNION ALL
          SELECT CASE WHEN coalesce(resolved_by LIKE 'person:%', false) THEN 'resolved_person'
                      ELSE 'resolved_automation' END, opened_severity, source, id
          FROM incidents WHERE resolved_at IS NOT NULL
          UNION ALL
          SELECT 'closed', opened_severity, source, id FROM incidents WHERE closed_at IS NOT NULL) AS e
    GROUP BY 1, 2, 3, 4;
END
$$;
SELECT erdu_counters_rebuild();

-- "Auto" in the rollups (and `erdu stats`) is every resolution without a person: a runbook's validated
-- fix, the learned shortcut, a source that said it recovered. It used to count the learned shortcut
-- only (incidents.auto_resolved, which the pipeline still uses to route the shortcut).
CREATE OR REPLACE FUNCTION erdu_facts(r incidents) RETURNS erdu_incident_facts LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(r.fingerprint, r.title, r.severity, r.source, r.status, r.created_at,
               (hashtext(r.id) & 7)::smallint,
               (r.status NOT IN ('resolved', 'closed'))::int,
               (r.closed_at IS NOT NULL)::int,
               (r.resolved_at IS NOT NULL)::int,
               (r.resolved_at IS NOT NULL AND coalesce(r.resolved_by LIKE 'person:%', false))::int,
               (r.acknowledged_at IS NOT NULL)::int,
               (r.escalated_at IS NOT NULL)::int,
               (r.resolved_at IS NOT NULL AND NOT coalesce(r.resolved_by LIKE 'person:%', false))::int,
               extract(epoch FROM r.acknowledged_at - r.created_at)::float8,
               extract(epoch FROM r.resolved_at - r.created_at)::float8)::erdu_incident_facts
$$;

SELECT erdu_rollups_rebuild();
