-- The exact args and kwargs of a failed task, as the app's result backend holds them (result_extended,
-- JSON): what a retry sends when present. args/kwargs stay the events' reprs (searched, shown).
ALTER TABLE celery_app_tasks
    ADD COLUMN args_value   jsonb,
    ADD COLUMN kwargs_value jsonb,
    ADD COLUMN values_from  text;
