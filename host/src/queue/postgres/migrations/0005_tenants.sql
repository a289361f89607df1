-- The tenant a job belongs to: its kind's prefix (`acme/echo` is
-- acme's), NULL for the host's own kinds. Derived, so it can never
-- disagree with the kind.
ALTER TABLE jobs ADD COLUMN tenant text
    GENERATED ALWAYS AS (CASE WHEN strpos(kind, '/') > 0 THEN split_part(kind, '/', 1) END) STORED;
CREATE INDEX jobs_tenant ON jobs (tenant, id) WHERE tenant IS NOT NULL;
-- A fair-share claim's path: one tenant's due jobs of one queue, best first.
CREATE INDEX jobs_tenant_due ON jobs (queue, coalesce(tenant, ''), priority DESC, scheduled_at, id)
    WHERE state IN ('available', 'scheduled', 'retryable');
