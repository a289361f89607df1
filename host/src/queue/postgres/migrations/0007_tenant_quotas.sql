-- max_waiting's count: a tenant's waiting jobs.
CREATE INDEX jobs_waiting_tenant ON jobs (coalesce(tenant, '')) WHERE state IN ('available', 'scheduled', 'retryable');
