-- Broker messages ingest has already taken in. A message comes back after a broker or worker crash
-- lost its acknowledgement; its events must not count twice or open a second incident.
CREATE TABLE ingest_receipts (
    message_id  text PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingest_receipts_received ON ingest_receipts (received_at);
