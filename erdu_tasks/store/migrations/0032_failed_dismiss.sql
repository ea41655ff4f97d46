-- A failed task a person has looked at and will not retry (a poison message, a task of a removed
-- version) is dismissed: it leaves `erdu failed ls` and the open count, and says who and why.
ALTER TABLE failed_tasks ADD COLUMN dismissed_at timestamptz;
ALTER TABLE failed_tasks ADD COLUMN dismissed_by text;
ALTER TABLE failed_tasks ADD COLUMN dismiss_note text;
DROP INDEX IF EXISTS failed_tasks_open;
CREATE INDEX failed_tasks_open ON failed_tasks (failed_at) WHERE retried_at IS NULL AND dismissed_at IS NULL;
