-- max_running's count: a tenant's running jobs.
CREATE INDEX jobs_running_tenant ON jobs (coalesce(tenant, '')) WHERE state = 'running';
-- rate's token buckets: tokens left at updated_at.
CREATE TABLE rate_buckets (
    name       text             PRIMARY KEY,
    tokens     double precision NOT NULL,
    updated_at bigint           NOT NULL
);
