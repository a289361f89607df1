//! SQL fragments as macros, so every statement is one literal built at
//! compile time (`concat!`), not formatted again for each job.

// SQL fragments as macros, so every statement below is one literal built at
// compile time (`concat!`), not formatted again for each job.
macro_rules! columns {
    () => {
        "id, kind, queue, priority, payload, state, attempt, max_attempts, scheduled_at, unique_key, \
         errors, result, lease_token, leased_by, lease_expires_at, cancel_requested, created_at, attempted_at, finalized_at, \
         plugin_version, parent_id, concurrency_key, progress_percent, progress_note, traceparent"
    };
}

/// The states a claim takes jobs from (once due).
macro_rules! waiting {
    () => {
        "('available', 'scheduled', 'retryable')"
    };
}

macro_rules! clear_lease {
    () => {
        "leased_by = NULL, lease_expires_at = NULL"
    };
}

/// The fencing rule: a transition out of `running` names the current token.
/// `?9` is the plugin version that ran the attempt.
macro_rules! fence {
    () => {
        ", plugin_version = coalesce(?9, plugin_version) WHERE id = ?1 AND lease_token = ?2 AND state = 'running'"
    };
}

/// A job's tenant compared with a parameter that follows (`''`: the host's own).
macro_rules! tenant_is {
    () => {
        "coalesce(tenant, '') = "
    };
}

/// The states of a job not yet done with.
macro_rules! pending {
    () => {
        "('available', 'scheduled', 'retryable', 'running')"
    };
}

/// The claim statement: the best due jobs of queue `?4` (unless paused)
/// that pass `$filter`, at most `?5`, to running for host `?1` until `?2`.
macro_rules! claim_sql {
    ($filter:expr) => {
        concat!(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_token = lease_token + 1, \
             leased_by = ?1, lease_expires_at = ?2, attempted_at = ?3 \
             WHERE id IN (SELECT id FROM jobs WHERE queue = ?4 AND ",
            $filter,
            "state IN ",
            waiting!(),
            " AND scheduled_at <= ?3 ORDER BY priority DESC, scheduled_at, id LIMIT ?5) \
               AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?4 AND paused = 1) \
             RETURNING ",
            columns!()
        )
    };
}

/// The candidates of a gated claim: what [`claim_sql!`] would take of
/// queue `?1` due at `?2` that pass `$filter`, less the kinds of the JSON
/// array `?3` and the `kind_key`s of `?4`, at most `?5`: id, kind, key.
macro_rules! candidates_sql {
    ($filter:expr) => {
        concat!(
            "SELECT id, kind, concurrency_key FROM jobs WHERE queue = ?1 AND ",
            $filter,
            "state IN ",
            waiting!(),
            " AND scheduled_at <= ?2 AND kind NOT IN (SELECT value FROM json_each(?3)) \
               AND (concurrency_key IS NULL OR kind || char(31) || concurrency_key NOT IN (SELECT value FROM json_each(?4))) \
               AND NOT EXISTS (SELECT 1 FROM queues WHERE name = ?1 AND paused = 1) \
             ORDER BY priority DESC, scheduled_at, id LIMIT ?5"
        )
    };
}

/// What the pruner never deletes: a job `j` that is its schedule's newest
/// tick, or its newest completed one (the next tick's checkpoint).
macro_rules! kept_tick {
    () => {
        "(j.unique_key IS NOT NULL AND substr(j.unique_key, 1, 9) = 'schedule:' AND j.unique_key IN ( \
           (SELECT max(s.unique_key) FROM jobs s WHERE s.kind = j.kind \
              AND s.unique_key >= 'schedule:' || j.kind || ':' AND s.unique_key < 'schedule:' || j.kind || ';'), \
           (SELECT max(s.unique_key) FROM jobs s WHERE s.kind = j.kind AND s.state = 'completed' \
              AND s.unique_key >= 'schedule:' || j.kind || ':' AND s.unique_key < 'schedule:' || j.kind || ';')))"
    };
}
