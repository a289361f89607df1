CREATE TABLE jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             text    NOT NULL,
    queue            text    NOT NULL,
    priority         integer NOT NULL DEFAULT 0,
    payload          bytea   NOT NULL,
    state            text    NOT NULL,
    attempt          integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL,
    scheduled_at     bigint  NOT NULL,
    -- Byte order, so a schedule's keys sort by tick whatever the
    -- database's collation.
    unique_key       text COLLATE "C",
    errors           jsonb   NOT NULL DEFAULT '[]',
    result           bytea,
    lease_token      bigint  NOT NULL DEFAULT 0,
    leased_by        text,
    lease_expires_at bigint,
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at       bigint  NOT NULL,
    attempted_at     bigint,
    finalized_at     bigint,
    plugin_version   text
);
-- The claim's path: due jobs of one queue, best first.
CREATE INDEX jobs_due ON jobs (queue, priority DESC, scheduled_at, id)
    WHERE state IN ('available', 'scheduled', 'retryable');
-- The rescuer's path.
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';
-- Pending jobs of a kind (plugin removal checks this).
CREATE INDEX jobs_pending_kind ON jobs (kind) WHERE state IN ('available', 'scheduled', 'retryable', 'running');
-- One job per unique key outside the states a job is finished with for
-- good (completed keeps its key, so a schedule's tick fires once).
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state NOT IN ('cancelled', 'dead');
-- A schedule's ticks: its newest tick, its newest completed one.
CREATE INDEX jobs_kind_key ON jobs (kind, unique_key) WHERE unique_key IS NOT NULL;
CREATE TABLE queues (
    name       text PRIMARY KEY,
    paused     boolean NOT NULL DEFAULT false,
    updated_at bigint  NOT NULL
);
CREATE TABLE loops (
    name             text PRIMARY KEY,
    checkpoint       bytea,
    passes           bigint NOT NULL DEFAULT 0,
    token            bigint NOT NULL DEFAULT 0,
    owner            text,
    lease_expires_at bigint,
    updated_at       bigint NOT NULL
);
-- Wakes every listening host: one notification per queue per inserting
-- statement, on the channel of this schema, sent when it commits.
CREATE FUNCTION kiln_notify_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('kiln:' || TG_TABLE_SCHEMA, queue) FROM (SELECT DISTINCT queue FROM inserted) AS touched;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_inserted AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION kiln_notify_inserted();
