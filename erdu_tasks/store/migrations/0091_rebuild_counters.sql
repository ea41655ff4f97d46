-- erdu_rollups_rebuild() (after a bulk load that skipped triggers) also recounts the counters of
-- 0055_counters and fills opened_severity, which the skipped BEFORE INSERT trigger sets. Like the other
-- rollups, the recount is over the incidents there now: incidents already pruned are not in it.
ALTER FUNCTION erdu_rollups_rebuild() RENAME TO erdu_rollups_rebuild_totals;

CREATE FUNCTION erdu_rollups_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE incidents SET opened_severity = severity WHERE opened_severity IS NULL;
    PERFORM erdu_rollups_rebuild_totals();
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
