-- A running job's last reported progress (with the heartbeat).
ALTER TABLE jobs ADD COLUMN progress_percent INTEGER;
ALTER TABLE jobs ADD COLUMN progress_note TEXT;
-- Each attempt as it ended, with its log lines (a JSON array).
CREATE TABLE job_attempts (
    job_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    host TEXT NOT NULL,
    plugin_version TEXT,
    started_at INTEGER NOT NULL,
    ended_at INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    error TEXT,
    duration_ms REAL NOT NULL,
    fuel_used INTEGER NOT NULL,
    peak_memory_bytes INTEGER NOT NULL,
    http_requests INTEGER NOT NULL,
    log_bytes_dropped INTEGER NOT NULL,
    logs TEXT NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
-- Whatever deletes a job (the pruner, a hand delete) deletes its attempts.
CREATE TRIGGER job_attempts_go_with_their_job AFTER DELETE ON jobs
BEGIN
    DELETE FROM job_attempts WHERE job_id = old.id;
END;
