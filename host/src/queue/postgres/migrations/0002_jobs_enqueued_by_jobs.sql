-- The job whose successful run enqueued this one.
ALTER TABLE jobs ADD COLUMN parent_id bigint;
CREATE INDEX jobs_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;
