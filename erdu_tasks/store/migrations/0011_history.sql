-- Years of history at the cost of day one: every per-incident query reads an index bounded by
-- what it needs, and the figures of /metrics and `erdu stats` are kept up to date by triggers in
-- the transaction that changes an incident, so neither a scrape nor stats reads the history.

-- Related incidents: nearest by trigram distance among those created in the lookback window. The
-- window is a column of the GiST index (btree_gist), checked while the index is walked, instead of
-- a filter on every row the walk returns; wider signatures (siglen) make the walk recheck fewer rows.
-- Titles carry numbers and ids, so they are many and spread: that tree is split by time first, which
-- prunes whole subtrees outside the window (half the title walk at 500,000 incidents). Templates
-- repeat, and their nearest are found at once. They replace the single-column indexes of 0010.
CREATE EXTENSION IF NOT EXISTS btree_gist;
CREATE INDEX incidents_template_knn_window ON incidents USING gist (template gist_trgm_ops(siglen=256), created_at);
CREATE INDEX incidents_title_knn_window ON incidents USING gist (created_at, title gist_trgm_ops(siglen=256));
DROP INDEX IF EXISTS incidents_title_knn;
DROP INDEX IF EXISTS incidents_template_knn;
-- No query asks "similar enough?" (the % operator) any more: the GIN trigram indexes of 0001 only cost
-- every insert.
DROP INDEX IF EXISTS incidents_title_trgm;
DROP INDEX IF EXISTS incidents_template_trgm;

-- Related incidents as the diagnostician found them, reused by the resolver (NULL: not searched yet).
ALTER TABLE incidents ADD COLUMN related jsonb;

-- Open incidents (counts, inhibition candidates) from an index of the open ones only.
CREATE INDEX incidents_open_by_severity ON incidents (severity, created_at, id)
    WHERE status NOT IN ('resolved', 'closed');
-- Flapping: the latest resolved incident of a fingerprint, newest first.
CREATE INDEX incidents_fingerprint_ended ON incidents (fingerprint, (coalesce(resolved_at, closed_at)))
    WHERE status IN ('resolved', 'closed');
-- Keyset paging, newest first: (created_at, id) < (cursor) ORDER BY created_at DESC, id DESC.
CREATE INDEX incidents_created_id ON incidents (created_at, id);
DROP INDEX IF EXISTS incidents_created;

-- ---------------------------------------------------------------------------------------------
-- Rollups. Rows are spread over 8 shards (by incident id) so concurrent stages rarely wait on the
-- same counter row; readers sum the shards. Every figure is "over the incidents that exist now,
-- by their current severity and status", as the queries over the whole table computed it.

CREATE TABLE incident_totals (
    severity            text NOT NULL,
    source              text NOT NULL,
    status              text NOT NULL,
    shard               smallint NOT NULL,
    incidents           bigint NOT NULL DEFAULT 0,
    closed              bigint NOT NULL DEFAULT 0,   -- closed_at set
    resolved            bigint NOT NULL DEFAULT 0,   -- resolved_at set
    resolved_by_person  bigint NOT NULL DEFAULT 0,   -- ... and resolved_by 'person:...'
    acknowledged        bigint NOT NULL DEFAULT 0,
    escalated           bigint NOT NULL DEFAULT 0,
    auto_resolved       bigint NOT NULL DEFAULT 0,   -- auto_resolved and resolved_at set
    ack_seconds         double precision NOT NULL DEFAULT 0,
    resolve_seconds     double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (severity, source, status, shard)
);

-- Histogram buckets: metric 'mtta' / 'mttr' (label: severity) and 'stage' (label: role). Bucket k
-- is width_bucket(seconds, bounds): k-1 <= x < k, 0 below the first bound, len(bounds) above the last.
CREATE TABLE duration_buckets (
    metric  text NOT NULL CHECK (metric IN ('mtta', 'mttr', 'stage')),
    label   text NOT NULL,
    bucket  integer NOT NULL,
    shard   smallint NOT NULL,
    n       bigint NOT NULL DEFAULT 0,
    total   double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (metric, label, bucket, shard)
);

CREATE TABLE fingerprint_totals (
    fingerprint     text PRIMARY KEY,
    title           text,                 -- of its latest incident
    latest_at       timestamptz,
    incidents       bigint NOT NULL DEFAULT 0,
    open            bigint NOT NULL DEFAULT 0,
    resolved        bigint NOT NULL DEFAULT 0,
    escalated       bigint NOT NULL DEFAULT 0,
    auto_resolved   bigint NOT NULL DEFAULT 0,
    acknowledged    bigint NOT NULL DEFAULT 0,
    ack_seconds     double precision NOT NULL DEFAULT 0,
    resolve_seconds double precision NOT NULL DEFAULT 0
);
CREATE INDEX fingerprint_totals_rank ON fingerprint_totals (incidents DESC, fingerprint) WHERE incidents > 0;

-- The bucket bounds (seconds); erdu_tasks/store/metrics.py checks its own against these.
CREATE FUNCTION erdu_response_bounds() RETURNS float8[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT '{1,5,15,30,60,120,300,600,1800,3600,7200,14400,43200,86400}'::float8[] $$;
CREATE FUNCTION erdu_stage_bounds() RETURNS float8[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT '{0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10,30,60,120,300}'::float8[] $$;
CREATE FUNCTION erdu_stage_roles() RETURNS text[] LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT '{commander,diagnostician,fixer,resolver}'::text[] $$;

-- What one incident row adds to the rollups.
CREATE TYPE erdu_incident_facts AS (
    fingerprint text, title text, severity text, source text, status text, created_at timestamptz,
    shard smallint, is_open int, closed int, resolved int, by_person int, acknowledged int, escalated int,
    auto_resolved int, ack_seconds float8, resolve_seconds float8
);

CREATE FUNCTION erdu_facts(r incidents) RETURNS erdu_incident_facts LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(r.fingerprint, r.title, r.severity, r.source, r.status, r.created_at,
               (hashtext(r.id) & 7)::smallint,
               (r.status NOT IN ('resolved', 'closed'))::int,
               (r.closed_at IS NOT NULL)::int,
               (r.resolved_at IS NOT NULL)::int,
               (r.resolved_at IS NOT NULL AND coalesce(r.resolved_by LIKE 'person:%', false))::int,
               (r.acknowledged_at IS NOT NULL)::int,
               (r.escalated_at IS NOT NULL)::int,
               (r.auto_resolved AND r.resolved_at IS NOT NULL)::int,
               extract(epoch FROM r.acknowledged_at - r.created_at)::float8,
               extract(epoch FROM r.resolved_at - r.created_at)::float8)::erdu_incident_facts
$$;

-- (-1, facts of old) and (+1, facts of new); either may be NULL.
CREATE FUNCTION erdu_delta(o incidents, n incidents) RETURNS TABLE (sign int, f erdu_incident_facts)
LANGUAGE sql IMMUTABLE AS $$
    SELECT -1, erdu_facts(o) WHERE o.id IS NOT NULL
    UNION ALL
    SELECT 1, erdu_facts(n) WHERE n.id IS NOT NULL
$$;

-- Apply (-1, old) and (+1, new) (either may be NULL) to the rollups, rows locked in key order.
CREATE FUNCTION erdu_rollup_incident(o incidents, nw incidents) RETURNS void LANGUAGE plpgsql AS $$
BEGIN

    INSERT INTO incident_totals AS t (severity, source, status, shard, incidents, closed, resolved,
                                      resolved_by_person, acknowledged, escalated, auto_resolved, ack_seconds,
                                      resolve_seconds)
    SELECT (f).severity, (f).source, (f).status, (f).shard, sum(sign), sum(sign * (f).closed),
           sum(sign * (f).resolved), sum(sign * (f).by_person), sum(sign * (f).acknowledged),
           sum(sign * (f).escalated), sum(sign * (f).auto_resolved),
           coalesce(sum(sign * (f).ack_seconds), 0), coalesce(sum(sign * (f).resolve_seconds), 0)
    FROM erdu_delta(o, nw) GROUP BY 1, 2, 3, 4
    HAVING sum(sign) <> 0 OR sum(sign * (f).closed) <> 0 OR sum(sign * (f).resolved) <> 0
        OR sum(sign * (f).by_person) <> 0 OR sum(sign * (f).acknowledged) <> 0 OR sum(sign * (f).escalated) <> 0
        OR sum(sign * (f).auto_resolved) <> 0 OR coalesce(sum(sign * (f).ack_seconds), 0) <> 0
        OR coalesce(sum(sign * (f).resolve_seconds), 0) <> 0
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (severity, source, status, shard) DO UPDATE SET
        incidents = t.incidents + EXCLUDED.incidents, closed = t.closed + EXCLUDED.closed,
        resolved = t.resolved + EXCLUDED.resolved,
        resolved_by_person = t.resolved_by_person + EXCLUDED.resolved_by_person,
        acknowledged = t.acknowledged + EXCLUDED.acknowledged, escalated = t.escalated + EXCLUDED.escalated,
        auto_resolved = t.auto_resolved + EXCLUDED.auto_resolved,
        ack_seconds = t.ack_seconds + EXCLUDED.ack_seconds,
        resolve_seconds = t.resolve_seconds + EXCLUDED.resolve_seconds;

    INSERT INTO duration_buckets AS b (metric, label, bucket, shard, n, total)
    SELECT metric, label, bucket, shard, sum(sign), sum(sign * secs)
    FROM (SELECT 'mtta' AS metric, (f).severity AS label, width_bucket((f).ack_seconds, erdu_response_bounds()) AS bucket,
                 (f).shard AS shard, sign, (f).ack_seconds AS secs
          FROM erdu_delta(o, nw) WHERE (f).ack_seconds IS NOT NULL
          UNION ALL
          SELECT 'mttr', (f).severity, width_bucket((f).resolve_seconds, erdu_response_bounds()), (f).shard, sign,
                 (f).resolve_seconds
          FROM erdu_delta(o, nw) WHERE (f).resolve_seconds IS NOT NULL) AS d
    GROUP BY 1, 2, 3, 4 HAVING sum(sign) <> 0 OR sum(sign * secs) <> 0
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (metric, label, bucket, shard) DO UPDATE SET n = b.n + EXCLUDED.n, total = b.total + EXCLUDED.total;

    INSERT INTO fingerprint_totals AS p (fingerprint, title, latest_at, incidents, open, resolved, escalated,
                                         auto_resolved, acknowledged, ack_seconds, resolve_seconds)
    SELECT (f).fingerprint,
           (array_agg((f).title ORDER BY (f).created_at DESC) FILTER (WHERE sign > 0))[1],
           max((f).created_at) FILTER (WHERE sign > 0),
           sum(sign), sum(sign * (f).is_open), sum(sign * (f).resolved), sum(sign * (f).escalated),
           sum(sign * (f).auto_resolved), sum(sign * (f).acknowledged), coalesce(sum(sign * (f).ack_seconds), 0),
           coalesce(sum(sign * (f).resolve_seconds), 0)
    FROM erdu_delta(o, nw) GROUP BY 1 ORDER BY 1
    ON CONFLICT (fingerprint) DO UPDATE SET
        title = CASE WHEN EXCLUDED.latest_at >= coalesce(p.latest_at, '-infinity') THEN EXCLUDED.title ELSE p.title END,
        latest_at = greatest(p.latest_at, EXCLUDED.latest_at),
        incidents = p.incidents + EXCLUDED.incidents, open = p.open + EXCLUDED.open,
        resolved = p.resolved + EXCLUDED.resolved, escalated = p.escalated + EXCLUDED.escalated,
        auto_resolved = p.auto_resolved + EXCLUDED.auto_resolved, acknowledged = p.acknowledged + EXCLUDED.acknowledged,
        ack_seconds = p.ack_seconds + EXCLUDED.ack_seconds, resolve_seconds = p.resolve_seconds + EXCLUDED.resolve_seconds;

    -- The latest incident of a fingerprint went away: its title is the next latest one's.
    IF nw.id IS NULL AND o.id IS NOT NULL THEN
        UPDATE fingerprint_totals p SET title = l.title, latest_at = l.created_at
        FROM (SELECT o.fingerprint AS fingerprint) AS k
        LEFT JOIN LATERAL (SELECT title, created_at FROM incidents i WHERE i.fingerprint = k.fingerprint
                           AND i.id <> o.id ORDER BY created_at DESC LIMIT 1) AS l ON true
        WHERE p.fingerprint = o.fingerprint AND p.latest_at <= o.created_at;
    END IF;
END
$$;

CREATE FUNCTION erdu_incidents_rollup_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM erdu_rollup_incident(NULL, NEW);
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM erdu_rollup_incident(OLD, NEW);
    ELSE
        PERFORM erdu_rollup_incident(OLD, NULL);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER incidents_rollup_insert AFTER INSERT ON incidents
    FOR EACH ROW EXECUTE FUNCTION erdu_incidents_rollup_trigger();
CREATE TRIGGER incidents_rollup_delete AFTER DELETE ON incidents
    FOR EACH ROW EXECUTE FUNCTION erdu_incidents_rollup_trigger();
-- Only a change of what the rollups count: an occurrence bump on an open incident costs nothing here.
CREATE TRIGGER incidents_rollup_update AFTER UPDATE ON incidents
    FOR EACH ROW WHEN ((OLD.severity, OLD.source, OLD.status, OLD.fingerprint, OLD.title, OLD.created_at,
                        OLD.acknowledged_at, OLD.resolved_at, OLD.escalated_at, OLD.closed_at, OLD.resolved_by,
                        OLD.auto_resolved)
                       IS DISTINCT FROM
                       (NEW.severity, NEW.source, NEW.status, NEW.fingerprint, NEW.title, NEW.created_at,
                        NEW.acknowledged_at, NEW.resolved_at, NEW.escalated_at, NEW.closed_at, NEW.resolved_by,
                        NEW.auto_resolved))
    EXECUTE FUNCTION erdu_incidents_rollup_trigger();

-- Stage latency: a role's status change, timed from the incident's previous status change (or its
-- creation), kept on the timeline row so that deleting the row takes it out of the histogram again.
ALTER TABLE incident_timeline ADD COLUMN stage_seconds double precision;

CREATE FUNCTION erdu_timeline_stage_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    prev timestamptz;
BEGIN
    SELECT t.at INTO prev FROM incident_timeline t
    WHERE t.incident_id = NEW.incident_id AND t.id < NEW.id AND t.to_status IS NOT NULL
    ORDER BY t.id DESC LIMIT 1;
    IF prev IS NULL THEN
        SELECT i.created_at INTO prev FROM incidents i WHERE i.id = NEW.incident_id;
    END IF;
    NEW.stage_seconds := extract(epoch FROM NEW.at - prev)::float8;
    IF NEW.stage_seconds IS NOT NULL THEN
        INSERT INTO duration_buckets AS b (metric, label, bucket, shard, n, total)
        VALUES ('stage', NEW.actor, width_bucket(NEW.stage_seconds, erdu_stage_bounds()),
                (hashtext(NEW.incident_id) & 7)::smallint, 1, NEW.stage_seconds)
        ON CONFLICT (metric, label, bucket, shard) DO UPDATE SET n = b.n + 1, total = b.total + EXCLUDED.total;
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION erdu_timeline_unstage_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE duration_buckets SET n = n - 1, total = total - OLD.stage_seconds
    WHERE metric = 'stage' AND label = OLD.actor AND bucket = width_bucket(OLD.stage_seconds, erdu_stage_bounds())
      AND shard = (hashtext(OLD.incident_id) & 7)::smallint;
    RETURN NULL;
END
$$;

CREATE TRIGGER incident_timeline_stage BEFORE INSERT ON incident_timeline
    FOR EACH ROW WHEN (NEW.to_status IS NOT NULL AND NEW.actor = ANY (erdu_stage_roles()))
    EXECUTE FUNCTION erdu_timeline_stage_trigger();
CREATE TRIGGER incident_timeline_unstage AFTER DELETE ON incident_timeline
    FOR EACH ROW WHEN (OLD.stage_seconds IS NOT NULL)
    EXECUTE FUNCTION erdu_timeline_unstage_trigger();

-- TRUNCATE skips row triggers: empty what the truncated table fed.
CREATE FUNCTION erdu_rollups_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'incidents' THEN
        DELETE FROM incident_totals;
        DELETE FROM fingerprint_totals;
        DELETE FROM duration_buckets;
    ELSE
        DELETE FROM duration_buckets WHERE metric = 'stage';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER incidents_rollup_truncate AFTER TRUNCATE ON incidents
    FOR EACH STATEMENT EXECUTE FUNCTION erdu_rollups_truncated();
CREATE TRIGGER incident_timeline_rollup_truncate AFTER TRUNCATE ON incident_timeline
    FOR EACH STATEMENT EXECUTE FUNCTION erdu_rollups_truncated();

-- Recompute every rollup from the tables (here, for the rows already there; after a bulk load
-- that skipped triggers). Reads the whole history once, and writes the stage latency of timeline rows
-- that have none yet.
CREATE FUNCTION erdu_rollups_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM incident_totals;
    DELETE FROM fingerprint_totals;
    DELETE FROM duration_buckets;
    CREATE TEMP TABLE erdu_rebuild_facts ON COMMIT DROP AS SELECT f.* FROM incidents i CROSS JOIN LATERAL erdu_facts(i) AS f;
    INSERT INTO incident_totals (severity, source, status, shard, incidents, closed, resolved, resolved_by_person,
                                 acknowledged, escalated, auto_resolved, ack_seconds, resolve_seconds)
    SELECT severity, source, status, shard, count(*), sum(closed), sum(resolved), sum(by_person), sum(acknowledged),
           sum(escalated), sum(auto_resolved), coalesce(sum(ack_seconds), 0), coalesce(sum(resolve_seconds), 0)
    FROM erdu_rebuild_facts GROUP BY 1, 2, 3, 4;
    INSERT INTO duration_buckets (metric, label, bucket, shard, n, total)
    SELECT 'mtta', severity, width_bucket(ack_seconds, erdu_response_bounds()), shard, count(*), sum(ack_seconds)
    FROM erdu_rebuild_facts WHERE ack_seconds IS NOT NULL GROUP BY 1, 2, 3, 4
    UNION ALL
    SELECT 'mttr', severity, width_bucket(resolve_seconds, erdu_response_bounds()), shard, count(*),
           sum(resolve_seconds)
    FROM erdu_rebuild_facts WHERE resolve_seconds IS NOT NULL GROUP BY 1, 2, 3, 4;
    INSERT INTO fingerprint_totals (fingerprint, title, latest_at, incidents, open, resolved, escalated, auto_resolved,
                                    acknowledged, ack_seconds, resolve_seconds)
    SELECT fingerprint, (array_agg(title ORDER BY created_at DESC))[1], max(created_at), count(*), sum(is_open),
           sum(resolved), sum(escalated), sum(auto_resolved), sum(acknowledged), coalesce(sum(ack_seconds), 0),
           coalesce(sum(resolve_seconds), 0)
    FROM erdu_rebuild_facts GROUP BY 1;
    DROP TABLE erdu_rebuild_facts;
    UPDATE incident_timeline t SET stage_seconds = x.secs
    FROM (SELECT t.id, t.actor, extract(epoch FROM t.at - coalesce(lag(t.at) OVER w, i.created_at))::float8 AS secs
          FROM incident_timeline t JOIN incidents i ON i.id = t.incident_id
          WHERE t.to_status IS NOT NULL WINDOW w AS (PARTITION BY t.incident_id ORDER BY t.id)) AS x
    WHERE t.id = x.id AND x.actor = ANY (erdu_stage_roles()) AND t.stage_seconds IS DISTINCT FROM x.secs;
    INSERT INTO duration_buckets (metric, label, bucket, shard, n, total)
    SELECT 'stage', actor, width_bucket(stage_seconds, erdu_stage_bounds()), (hashtext(incident_id) & 7)::smallint,
           count(*), sum(stage_seconds)
    FROM incident_timeline WHERE stage_seconds IS NOT NULL GROUP BY 1, 2, 3, 4;
END
$$;

SELECT erdu_rollups_rebuild();
