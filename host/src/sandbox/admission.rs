//! Admission to the instance pool: a job takes the pooled slots its
//! component really needs before it is instantiated, and waits while the
//! pool is short, so a full pool delays jobs instead of failing them.

use super::engine::PoolSize;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What one instance of a component takes from the pool, known at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolNeeds {
    /// Linear memories its core instances define, summed.
    pub memories: u32,
}

/// The pool's free slots, as permits.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    instances: Arc<Semaphore>,
    memories: Arc<Semaphore>,
}

/// Slots held by one running iteration; released when dropped (after the
/// store, and with it the instance, is gone).
#[derive(Debug)]
pub(crate) struct Admitted {
    _instance: OwnedSemaphorePermit,
    _memories: Option<OwnedSemaphorePermit>,
}

impl Admission {
    pub(crate) fn new(size: PoolSize) -> Self {
        Self {
            instances: Arc::new(Semaphore::new(size.instances as usize)),
            memories: Arc::new(Semaphore::new(size.memories as usize)),
        }
    }

    /// Waits until the pool has an instance and `needs.memories` memory
    /// slots free, and takes them. Instances are taken first, so jobs
    /// waiting for memories are never more than the instances there are.
    pub(crate) async fn admit(&self, needs: PoolNeeds) -> Admitted {
        let instance = self.instances.clone().acquire_owned().await.expect("the pool's semaphores are never closed");
        let memories = match needs.memories {
            0 => None,
            n => Some(self.memories.clone().acquire_many_owned(n).await.expect("the pool's semaphores are never closed")),
        };
        Admitted { _instance: instance, _memories: memories }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_job_waits_for_memory_slots_and_gets_them_when_freed() {
        let admission = Admission::new(PoolSize { instances: 4, memories: 4 });
        let three = PoolNeeds { memories: 3 };
        let first = admission.admit(three).await;
        let second = tokio::time::timeout(Duration::from_millis(50), admission.admit(three)).await;
        assert!(second.is_err(), "only one slot is left: the second job waits");
        let waiting = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit(three).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("admitted once slots are free").unwrap();
    }

    #[tokio::test]
    async fn instances_bound_the_jobs_in_the_pool() {
        let admission = Admission::new(PoolSize { instances: 2, memories: 100 });
        let one = PoolNeeds { memories: 1 };
        let _a = admission.admit(one).await;
        let _b = admission.admit(one).await;
        assert!(tokio::time::timeout(Duration::from_millis(50), admission.admit(one)).await.is_err());
    }
}
