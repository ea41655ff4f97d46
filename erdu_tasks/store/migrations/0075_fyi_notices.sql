-- A P1 that closes without a real repair (a noop/verify runbook, or resolved by its source with no action)
-- tells its escalation policy's first level as an FYI: a notification kind of its own, never a page.
ALTER TABLE escalation_steps DROP CONSTRAINT IF EXISTS escalation_steps_kind_check;
ALTER TABLE escalation_steps ADD CONSTRAINT escalation_steps_kind_check
    CHECK (kind IN ('trigger', 'resolve', 'digest', 'page', 'reminder', 'fyi'));   -- 0040's kinds too
