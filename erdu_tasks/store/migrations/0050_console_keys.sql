-- The web console's signing key: one random secret shared by every API process of this database, so a
-- session cookie signed by one is accepted by the others and survives a restart. Nobody types it or
-- sees it; deleting the row signs everyone out (a new one is made on the next start).
CREATE TABLE console_keys (
    name       text PRIMARY KEY,
    secret     bytea NOT NULL CHECK (length(secret) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
