-- Related incidents through the patterns, not the incidents: one row per fingerprint with its latest
-- template and title, kept by a statement trigger in the transaction that inserts incidents. The
-- trigram nearest-neighbour walk runs over these few thousand rows; each near pattern's latest
-- incidents in the window come from the (fingerprint, created_at) btree. So the search costs the same
-- with years of history as on day one, and incidents carry no trigram index: a status change (never a
-- HOT update, status being indexed) no longer adds entries to two wide GiST trees.
CREATE TABLE incident_patterns (
    fingerprint     text PRIMARY KEY,
    template        text NOT NULL,
    title           text NOT NULL,
    last_created_at timestamptz NOT NULL
);
CREATE INDEX incident_patterns_template_knn ON incident_patterns USING gist (template gist_trgm_ops);
CREATE INDEX incident_patterns_title_knn ON incident_patterns USING gist (title gist_trgm_ops);

CREATE FUNCTION erdu_incident_patterns_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO incident_patterns AS p (fingerprint, template, title, last_created_at)
    SELECT DISTINCT ON (fingerprint) fingerprint, coalesce(nullif(template, ''), title), title, created_at
    FROM new_incidents ORDER BY fingerprint, created_at DESC
    ON CONFLICT (fingerprint) DO UPDATE SET template = EXCLUDED.template, title = EXCLUDED.title,
        last_created_at = EXCLUDED.last_created_at
    WHERE EXCLUDED.last_created_at >= p.last_created_at;
    RETURN NULL;
END
$$;
CREATE TRIGGER incidents_patterns_insert AFTER INSERT ON incidents REFERENCING NEW TABLE AS new_incidents
    FOR EACH STATEMENT EXECUTE FUNCTION erdu_incident_patterns_trigger();

-- From the incidents already there (and after a bulk load that skipped triggers).
CREATE FUNCTION erdu_incident_patterns_rebuild() RETURNS void LANGUAGE sql AS $$
    INSERT INTO incident_patterns AS p (fingerprint, template, title, last_created_at)
    SELECT DISTINCT ON (fingerprint) fingerprint, coalesce(nullif(template, ''), title), title, created_at
    FROM incidents ORDER BY fingerprint, created_at DESC
    ON CONFLICT (fingerprint) DO UPDATE SET template = EXCLUDED.template, title = EXCLUDED.title,
        last_created_at = EXCLUDED.last_created_at
    WHERE EXCLUDED.last_created_at >= p.last_created_at;
$$;
SELECT erdu_incident_patterns_rebuild();

DROP INDEX IF EXISTS incidents_template_knn_window;
DROP INDEX IF EXISTS incidents_title_knn_window;
