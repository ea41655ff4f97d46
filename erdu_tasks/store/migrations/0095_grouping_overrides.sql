-- What people taught the grouper: merges (this fingerprint is that one) and splits (the value of
-- this <*> of the template matters). Ingest applies them to every new event; it reloads them when
-- grouping_state.version moves, which every change here bumps in the same transaction.

CREATE TABLE grouping_overrides (
    id          bigserial PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('merge', 'split')),
    fingerprint text NOT NULL,
    target      text,            -- merge: the fingerprint it becomes
    slot        integer,         -- split: the <*> (1 = first) whose value becomes part of the key
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    note        text,
    CHECK ((kind = 'merge' AND target IS NOT NULL AND slot IS NULL AND target <> fingerprint)
        OR (kind = 'split' AND slot IS NOT NULL AND slot >= 1 AND target IS NULL))
);
CREATE UNIQUE INDEX grouping_overrides_one_merge ON grouping_overrides (fingerprint) WHERE kind = 'merge';
CREATE UNIQUE INDEX grouping_overrides_one_split ON grouping_overrides (fingerprint, slot) WHERE kind = 'split';

CREATE TABLE grouping_state (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version  bigint NOT NULL DEFAULT 0
);
INSERT INTO grouping_state (only_row, version) VALUES (true, 0);
