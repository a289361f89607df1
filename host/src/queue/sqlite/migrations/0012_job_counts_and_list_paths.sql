-- Jobs by queue, tenant ('' for the host's own) and state, kept by
-- triggers as jobs come, move and go, so counting is a read of a few
-- rows however many jobs there are (`/metrics`, `/queues`, quotas).
CREATE TABLE job_counts (
    queue  TEXT    NOT NULL,
    tenant TEXT    NOT NULL,
    state  TEXT    NOT NULL,
    n      INTEGER NOT NULL,
    PRIMARY KEY (queue, tenant, state)
) WITHOUT ROWID;
INSERT INTO job_counts (queue, tenant, state, n)
    SELECT queue, coalesce(tenant, ''), state, count(*) FROM jobs GROUP BY 1, 2, 3;
CREATE TRIGGER jobs_counted_in AFTER INSERT ON jobs
BEGIN
    INSERT INTO job_counts (queue, tenant, state, n) VALUES (new.queue, coalesce(new.tenant, ''), new.state, 1)
        ON CONFLICT (queue, tenant, state) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER jobs_counted_out AFTER DELETE ON jobs
BEGIN
    UPDATE job_counts SET n = n - 1 WHERE queue = old.queue AND tenant = coalesce(old.tenant, '') AND state = old.state;
END;
CREATE TRIGGER jobs_counted_moved AFTER UPDATE OF state, queue ON jobs
    WHEN new.state IS NOT old.state OR new.queue IS NOT old.queue
BEGIN
    INSERT INTO job_counts (queue, tenant, state, n)
        VALUES (old.queue, coalesce(old.tenant, ''), old.state, -1), (new.queue, coalesce(new.tenant, ''), new.state, 1)
        ON CONFLICT (queue, tenant, state) DO UPDATE SET n = n + excluded.n;
END;
-- A page of one state's jobs in id order (`GET /jobs?state=`) reads
-- only its page: an index holds each row's id after its columns, so
-- (state) is (state, id). It takes the place of (state, kind), which
-- served only the count of a kind's pending jobs at plugin removal.
DROP INDEX jobs_state_kind;
CREATE INDEX jobs_state ON jobs (state);
