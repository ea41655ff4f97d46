-- Alert instances seen from alert sources (Alertmanager): one row per (alert fingerprint, startsAt),
-- so a notification delivered twice changes nothing and a late "resolved" only ends its own instance.
CREATE TABLE alert_instances (
    source      text NOT NULL,
    alert_key   text NOT NULL,
    starts_at   timestamptz NOT NULL,
    state       text NOT NULL CHECK (state IN ('firing', 'resolved')),
    incident_id text REFERENCES incidents(id) ON DELETE SET NULL,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, alert_key, starts_at)
);
CREATE INDEX alert_instances_incident ON alert_instances (incident_id);
