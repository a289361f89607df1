//! What a caller may do with the jobs, queues and kv stores the worker
//! keeps: the one way the API and the dashboard reach them, and the one
//! place that decides what a request may do. Every call names its
//! [`Caller`]: a tenant reaches only its own objects (another tenant's
//! answers as not found, so ids leak nothing), names its own kinds
//! plainly (`echo` is its `acme/echo`), and what covers every tenant (a
//! queue's pause, `/metrics`) is the operator's.
//!
//! By what it reaches: [`jobs`] (enqueue, read, list, retry, delete,
//! cancel, dead jobs in bulk), [`queues`] (counts, pause, readiness,
//! metrics, tenants' use), [`kv`] (an operator's hand on a plugin's
//! stores), [`runs`] (what the dashboard charts: runs per minute,
//! schedules and loops).

pub mod jobs;
pub mod kv;
pub mod queues;
pub mod runs;

use super::Dispatcher;
use super::enqueue::EnqueueError;
use crate::plugin::Registry;
use crate::queue::StoreError;
use crate::tenant::Caller;
use std::sync::Arc;

/// Why a caller's request was not done, in the caller's words.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// Another tenant's object: answered as one that does not exist.
    #[error("{what} not found")]
    OtherTenants { what: String },
    /// It covers every tenant: the operator's only.
    #[error("{0}")]
    Forbidden(String),
    /// Over a bound or a quota (a kv value, a store's size).
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The service: cheap to clone, one per host, shared by every request.
#[derive(Clone, Debug)]
pub struct JobService {
    dispatcher: Dispatcher,
    registry: Arc<Registry>,
}

impl JobService {
    pub fn new(dispatcher: Dispatcher, registry: Arc<Registry>) -> Self {
        Self { dispatcher, registry }
    }

    /// The names of the queues this host serves, in config order.
    pub fn queue_names(&self) -> Vec<String> {
        self.dispatcher.config().queues.iter().map(|q| q.name.clone()).collect()
    }

    /// The host's clock, as the store stamps times.
    pub fn now(&self) -> crate::queue::Millis {
        self.dispatcher.clock().now()
    }

    /// Queues hold every tenant's jobs: acting on one is the operator's.
    fn operator_only(caller: &Caller, what: &str) -> Result<(), ServiceError> {
        match caller {
            Caller::Admin => Ok(()),
            Caller::Tenant(_) => Err(ServiceError::Forbidden(format!("{what} is the operator's: it covers every tenant (use an admin key)"))),
        }
    }
}
