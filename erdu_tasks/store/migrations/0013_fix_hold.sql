-- A fix counts only if it held: a validated run is watched for a while after it finished, and a new
-- incident of the same fingerprint in that time marks it failed after the fact (outcome 'recurred').
ALTER TABLE runbook_runs ADD COLUMN fingerprint text;
ALTER TABLE runbook_runs ADD COLUMN finished_at timestamptz;
ALTER TABLE runbook_runs ADD COLUMN counted boolean NOT NULL DEFAULT false;   -- counted in pattern_action_stats
ALTER TABLE runbook_runs ADD COLUMN hold_until timestamptz;                   -- watched for recurrence until then
ALTER TABLE runbook_runs ADD COLUMN recurred_by text;                         -- the incident that showed it did not hold
UPDATE runbook_runs r SET fingerprint = i.fingerprint FROM incidents i WHERE i.id = r.incident_id;
CREATE INDEX runbook_runs_holding ON runbook_runs (fingerprint, hold_until) WHERE outcome = 'success';
