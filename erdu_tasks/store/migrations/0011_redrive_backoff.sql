-- The reconciler backs off per incident: a stage owed past its deadline is re-driven, then again after
-- twice the deadline, four times... (reset by the next status change). Without it, a backlog longer
-- than the deadline has every queued incident re-driven each pass, and the copies deepen the backlog.
ALTER TABLE incidents ADD COLUMN redrives integer NOT NULL DEFAULT 0;
