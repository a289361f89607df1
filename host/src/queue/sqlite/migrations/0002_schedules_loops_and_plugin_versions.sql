ALTER TABLE jobs ADD COLUMN plugin_version TEXT;
-- A schedule's ticks: its newest tick, its newest completed one.
CREATE INDEX jobs_kind_key ON jobs (kind, unique_key) WHERE unique_key IS NOT NULL;
CREATE TABLE loops (
    name             TEXT PRIMARY KEY,
    checkpoint       BLOB,
    passes           INTEGER NOT NULL DEFAULT 0,
    token            INTEGER NOT NULL DEFAULT 0,
    owner            TEXT,
    lease_expires_at INTEGER,
    updated_at       INTEGER NOT NULL
);
