-- The pruner's paths: finished jobs by age, and each queue's newest.
CREATE INDEX jobs_finished ON jobs (state, finalized_at) WHERE state IN ('completed', 'cancelled', 'dead');
CREATE INDEX jobs_queue_finished ON jobs (queue, state, id) WHERE state IN ('completed', 'cancelled', 'dead');
