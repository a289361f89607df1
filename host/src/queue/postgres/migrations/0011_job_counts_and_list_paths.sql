-- Jobs by queue, tenant ('' for the host's own) and state, so counting
-- is a read of a few rows however many jobs there are (`/metrics`,
-- `/queues`, quotas). Every statement that adds, moves or removes jobs
-- appends its net change to job_count_deltas (appends: no row that
-- hosts' transactions contend for); a host folds the deltas into
-- job_counts every second; a count reads both.
CREATE TABLE job_counts (
    queue  text   NOT NULL,
    tenant text   NOT NULL,
    state  text   NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (queue, tenant, state)
);
CREATE TABLE job_count_deltas (
    queue  text   NOT NULL,
    tenant text   NOT NULL,
    state  text   NOT NULL,
    n      bigint NOT NULL
);
INSERT INTO job_counts (queue, tenant, state, n)
    SELECT queue, coalesce(tenant, ''), state, count(*) FROM jobs GROUP BY 1, 2, 3;
CREATE FUNCTION kiln_count_jobs() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_count_deltas (queue, tenant, state, n)
            SELECT queue, coalesce(tenant, ''), state, count(*) FROM new_rows GROUP BY 1, 2, 3;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO job_count_deltas (queue, tenant, state, n)
            SELECT queue, coalesce(tenant, ''), state, -count(*) FROM old_rows GROUP BY 1, 2, 3;
    ELSE
        INSERT INTO job_count_deltas (queue, tenant, state, n)
            SELECT queue, tenant, state, sum(n) FROM (
                SELECT nw.queue, coalesce(nw.tenant, '') AS tenant, nw.state, 1 AS n
                    FROM new_rows nw JOIN old_rows od ON od.id = nw.id WHERE nw.state <> od.state OR nw.queue <> od.queue
                UNION ALL
                SELECT od.queue, coalesce(od.tenant, ''), od.state, -1
                    FROM new_rows nw JOIN old_rows od ON od.id = nw.id WHERE nw.state <> od.state OR nw.queue <> od.queue
            ) moved GROUP BY 1, 2, 3 HAVING sum(n) <> 0;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER jobs_counted_in AFTER INSERT ON jobs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kiln_count_jobs();
CREATE TRIGGER jobs_counted_moved AFTER UPDATE ON jobs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kiln_count_jobs();
CREATE TRIGGER jobs_counted_out AFTER DELETE ON jobs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION kiln_count_jobs();
-- A page of one state's jobs in id order (`GET /jobs?state=`).
CREATE INDEX jobs_state_id ON jobs (state, id);
