//! What every handler and dashboard page can reach ([`AppState`]): the
//! worker's service, the plugin registry, readiness, the HTTP limits, who
//! may call, the tenants and the dashboard's sessions.

use super::auth::Access;
use super::dashboard::session::Sessions;
use super::error::AppError;
use super::server::HttpLimits;
use crate::plugin::Registry;
use crate::tenant::{Caller, TenantSettings};
use crate::worker::{JobService, ServiceError};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    /// What callers may do with jobs, queues and kv stores.
    pub service: JobService,
    pub registry: Arc<Registry>,
    /// `Some(reason)` while the host is not ready (start-up plugins still
    /// running, shutting down).
    pub not_ready: watch::Receiver<Option<String>>,
    /// Connections, timeouts and the host names the API answers to.
    pub http: HttpLimits,
    /// Who may call it.
    pub access: Access,
    /// The tenants kiln.toml names, for `GET /tenants`.
    pub tenants: Arc<BTreeMap<String, TenantSettings>>,
    /// The dashboard's logged-in browsers.
    pub sessions: Sessions,
}

impl AppState {
    /// A service refusal as the API answers it; another tenant's object is
    /// not found, and the refusal is logged (with `method` and `path`).
    pub(crate) fn refused(&self, e: ServiceError, caller: &Caller, method: &http::Method, path: &str) -> AppError {
        if let ServiceError::OtherTenants { what } = &e {
            self.access.note_refusal(method, path, caller.tenant(), &format!("another tenant's {what} (answered 404)"));
        }
        e.into()
    }
}
