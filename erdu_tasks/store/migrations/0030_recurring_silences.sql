-- Recurring silences: a silence may be in force only during named time intervals of the settings
-- (escalation.time_intervals), and is reminded about shortly before it ends.
ALTER TABLE silences ADD COLUMN active_during jsonb NOT NULL DEFAULT '[]'::jsonb;
ALTER TABLE silences ADD COLUMN reminded_at timestamptz;
