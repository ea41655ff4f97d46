-- erdu_rollups_rebuild() (after a bulk load that skipped triggers) also recounts the counters of
-- 0055_counters and fills opened_severity, which the skipped BEFORE INSERT trigger sets. Like the other
-- rollups, the recount is over the incidents there now: incidents already pruned are not in it.
ALTER FUNCTION erdu_rollups_rebuild() RENAME TO erdu_rollups_rebuild_totals;

CREATE FUNCTION erdu_rollups_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE incidents SET opened_severity = severity WHERE opened_severity IS NULL;
    PERFORM erdu_rollups_rebuild_totals();
    PERFORM erdu_counters_rebuild();
END
$$;
