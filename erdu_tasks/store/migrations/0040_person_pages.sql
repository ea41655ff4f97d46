-- Steps that page a person by hand (a reassignment: kind 'page') and silence-expiry reminders
-- (kind 'reminder', no incident) are claimed and delivered like every other step.
ALTER TABLE escalation_steps DROP CONSTRAINT IF EXISTS escalation_steps_kind_check;
ALTER TABLE escalation_steps ADD CONSTRAINT escalation_steps_kind_check
    CHECK (kind IN ('trigger', 'resolve', 'digest', 'page', 'reminder'));
