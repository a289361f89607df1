-- A running job's last reported progress (with the heartbeat).
ALTER TABLE jobs ADD COLUMN progress_percent smallint;
ALTER TABLE jobs ADD COLUMN progress_note text;
-- Each attempt as it ended, with its log lines (a JSON array); whatever
-- deletes a job (the pruner, a hand delete) deletes its attempts.
CREATE TABLE job_attempts (
    job_id            bigint           NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt           integer          NOT NULL,
    host              text             NOT NULL,
    plugin_version    text,
    started_at        bigint           NOT NULL,
    ended_at          bigint           NOT NULL,
    outcome           text             NOT NULL,
    error             text,
    duration_ms       double precision NOT NULL,
    fuel_used         bigint           NOT NULL,
    peak_memory_bytes bigint           NOT NULL,
    http_requests     bigint           NOT NULL,
    log_bytes_dropped bigint           NOT NULL,
    logs              text             NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
