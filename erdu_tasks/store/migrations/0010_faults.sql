-- Broker messages ingest has already taken in. A message comes back after a broker or worker crash
-- lost its acknowledgement; its events must not count twice or open a second incident.
CREATE TABLE ingest_receipts (
    message_id  text PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingest_receipts_received ON ingest_receipts (received_at);

-- Nearest-neighbour trigram search (ORDER BY title <-> $1 LIMIT n) for related incidents: the GIN
-- indexes answer "similar enough?" but a storm of similar titles makes that every row.
CREATE INDEX incidents_title_knn ON incidents USING gist (title gist_trgm_ops);
CREATE INDEX incidents_template_knn ON incidents USING gist (template gist_trgm_ops);
