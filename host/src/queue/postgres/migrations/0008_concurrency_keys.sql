-- A job's group under its kind's max_per_key (a customer id, say).
ALTER TABLE jobs ADD COLUMN concurrency_key text;
-- max_per_key's count: a kind's running jobs per key.
CREATE INDEX jobs_running_key ON jobs (kind, concurrency_key) WHERE state = 'running' AND concurrency_key IS NOT NULL;
