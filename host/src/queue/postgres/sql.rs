//! SQL fragments as macros, so every statement is one literal built at
//! compile time (`concat!`), not formatted again for each job.

// SQL fragments as macros, so each statement is one literal built at
// compile time (`concat!`).
macro_rules! columns {
    () => {
        "jobs.id, jobs.kind, jobs.queue, jobs.priority, jobs.payload, jobs.state, jobs.attempt, jobs.max_attempts, \
         jobs.scheduled_at, jobs.unique_key, jobs.errors::text, jobs.result, jobs.lease_token, jobs.leased_by, \
         jobs.lease_expires_at, jobs.cancel_requested, jobs.created_at, jobs.attempted_at, jobs.finalized_at, jobs.plugin_version, \
         jobs.parent_id, jobs.concurrency_key, jobs.progress_percent, jobs.progress_note, jobs.traceparent"
    };
}

/// The job counts as of now: what is folded and what is not yet.
macro_rules! counted {
    () => {
        "(SELECT queue, tenant, state, n FROM job_counts UNION ALL SELECT queue, tenant, state, n FROM job_count_deltas) AS counted"
    };
}

/// A job's tenant compared with a parameter that follows (`''`: the host's own).
macro_rules! tenant_is {
    () => {
        "coalesce(tenant, '') = "
    };
}

/// The states a claim takes jobs from (once due).
macro_rules! waiting {
    () => {
        "('available', 'scheduled', 'retryable')"
    };
}

/// The states of a job not yet done with.
macro_rules! pending {
    () => {
        "('available', 'scheduled', 'retryable', 'running')"
    };
}

/// The one-row transitions out of `running` share this tail: clear the
/// lease, record the version, and the fencing rule. `$1` id, `$2` token,
/// `$3` the plugin version.
macro_rules! fenced {
    () => {
        ", leased_by = NULL, lease_expires_at = NULL, plugin_version = coalesce($3::text, plugin_version) \
         WHERE id = $1 AND lease_token = $2 AND state = 'running'"
    };
}

/// Locks the rows of the leases in `done` (id, token) that are still
/// current, in id order. A host's heartbeat and its finisher touch the
/// same rows at once; taking row locks in one order keeps them from
/// deadlocking (an `UPDATE ... FROM unnest` locks in whatever order its
/// join produces).
macro_rules! locked_in_order {
    () => {
        "locked AS (SELECT jobs.id FROM jobs JOIN done ON jobs.id = done.id \
         WHERE jobs.lease_token = done.token AND jobs.state = 'running' ORDER BY jobs.id FOR UPDATE OF jobs) "
    };
}

/// The unique index's predicate, named in `ON CONFLICT` so Postgres infers it.
macro_rules! unique_live {
    () => {
        "(unique_key) WHERE unique_key IS NOT NULL AND state NOT IN ('cancelled', 'dead')"
    };
}

/// The claim statement: the best due jobs of queue `$1` (unless paused)
/// that pass `$filter`, at most `$3`, to running for host `$4` until `$5`.
macro_rules! claim_sql {
    ($filter:expr) => {
        concat!(
            "WITH picked AS (SELECT id FROM jobs WHERE queue = $1 AND ",
            $filter,
            "state IN ",
            waiting!(),
            " AND scheduled_at <= $2 AND NOT EXISTS (SELECT 1 FROM queues WHERE name = $1 AND paused) \
               ORDER BY priority DESC, scheduled_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
             UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_token = lease_token + 1, \
               leased_by = $4, lease_expires_at = $5, attempted_at = $2 \
             FROM picked WHERE jobs.id = picked.id RETURNING ",
            columns!()
        )
    };
}

/// The candidates of a gated claim: what [`claim_sql!`] would take of
/// queue `$1` due at `$2` that pass `$filter`, less the kinds of `$3` and
/// the `kind_key`s of `$4`, at most `$5`: id, kind, key.
macro_rules! candidates_sql {
    ($filter:expr) => {
        concat!(
            "SELECT id, kind, concurrency_key FROM jobs WHERE queue = $1 AND ",
            $filter,
            "state IN ",
            waiting!(),
            " AND scheduled_at <= $2 AND kind <> ALL($3::text[]) \
               AND (concurrency_key IS NULL OR kind || chr(31) || concurrency_key <> ALL($4::text[])) \
               AND NOT EXISTS (SELECT 1 FROM queues WHERE name = $1 AND paused) \
             ORDER BY priority DESC, scheduled_at, id LIMIT $5 FOR UPDATE SKIP LOCKED"
        )
    };
}

/// What the pruner never deletes: a job `j` that is its schedule's newest
/// tick, or its newest completed one (the next tick's checkpoint).
macro_rules! kept_tick {
    () => {
        "(j.unique_key IS NOT NULL AND starts_with(j.unique_key, 'schedule:') AND j.unique_key IN ( \
           (SELECT max(s.unique_key) FROM jobs s WHERE s.kind = j.kind AND starts_with(s.unique_key, 'schedule:' || j.kind || ':')), \
           (SELECT max(s.unique_key) FROM jobs s WHERE s.kind = j.kind AND s.state = 'completed' \
              AND starts_with(s.unique_key, 'schedule:' || j.kind || ':'))))"
    };
}
