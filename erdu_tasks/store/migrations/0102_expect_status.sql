-- A stage that acted outside its transaction (the fixer's steps) settles in one round trip: its first
-- statement locks the incident and fails the transaction, with SQLSTATE EU409, unless the incident is
-- still in the status the stage left it in; the writes after it are then never applied and the stage
-- settles again against the incident as it is now (tasks/base.drive_stage).
CREATE FUNCTION erdu_expect_status(incident text, expected text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    found text;
BEGIN
    SELECT status INTO found FROM incidents WHERE id = incident FOR UPDATE;
    IF found IS NULL OR NOT found = ANY(expected) THEN
        RAISE EXCEPTION 'incident % is %, not %', incident, coalesce(found, 'gone'), array_to_string(expected, ' or ')
            USING ERRCODE = 'EU409';
    END IF;
END
$$;
