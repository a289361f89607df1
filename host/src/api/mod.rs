//! The HTTP API, one file per resource: `jobs`, `queues`, `plugins`,
//! `kv`, `tenants`, `health` (liveness, readiness, metrics); the
//! dashboard's pages in [`dashboard`]. Handlers translate requests into
//! calls of the worker's [`JobService`](crate::worker::JobService) and the
//! plugin [`Registry`](crate::plugin::Registry),
//! which decide what a caller may do; none reaches the store.
//!
//! Every handler acts as the [`Caller`](crate::tenant::Caller) the request's key belongs to: a
//! tenant names its own plugins (`echo` is its `acme/echo`), sees only its
//! own jobs and plugins, and gets 404 for anything else, so ids leak
//! nothing. The operator sees everything and writes a tenant's kinds as
//! `acme/echo`.

pub mod auth;
pub mod browser_guard;
pub mod dashboard;
mod error;
mod health;
mod jobs;
mod kv;
mod plugins;
mod queues;
mod request;
pub mod server;
mod state;
mod tenants;
mod views;

pub use error::AppError;
pub use request::{MAX_BODY_BYTES, MAX_PAGE, MAX_PAGE_BYTES};
pub use state::AppState;
pub use server::HttpLimits;
pub use plugins::DeployRequest;
pub use views::{AttemptView, EnqueuedAnswer, EnqueuedView, ErrorBody, JobRequests, JobDetailView, JobPage, JobRequest, JobView, ListQuery, LogLineView, LogPage, LogQuery, bytes_value};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::routing::get;
use std::future::Future;
use std::sync::Arc;

/// What the document says besides its paths: who it is for, how to
/// authenticate, what its tags group. The paths come from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Kiln", description = "Kiln's HTTP API: jobs, queues, plugins and their kv stores, tenants, the host's health. \
        With API keys configured every call but /healthz, /readyz and /openapi.json needs `Authorization: Bearer KEY`."),
    modifiers(&BearerKeys),
    tags(
        (name = "jobs", description = "Enqueue, list, read, retry, cancel and delete jobs; their attempts and logs"),
        (name = "queues", description = "Queues by state; pause and resume"),
        (name = "plugins", description = "Deploy, roll back and remove plugins"),
        (name = "kv", description = "A plugin's key-value stores"),
        (name = "tenants", description = "Tenants' limits and use"),
        (name = "host", description = "Health, readiness and metrics"),
    )
)]
struct ApiDoc;

/// The bearer API key, required by every operation that does not say otherwise.
struct BearerKeys;

impl utoipa::Modify for BearerKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()));
        openapi.security = Some(vec![SecurityRequirement::new("api_key", Vec::<String>::new())]);
    }
}

/// Every route with its handler, and the OpenAPI document built from the
/// same annotations: a route is in the document because it is served.
fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    use utoipa::OpenApi as _;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(jobs::enqueue, jobs::list_jobs, jobs::delete_many))
        .routes(routes!(jobs::get_job, jobs::delete_job))
        .routes(routes!(jobs::job_logs))
        .routes(routes!(jobs::retry_many))
        .routes(routes!(jobs::retry_job))
        .routes(routes!(jobs::cancel_job))
        .routes(routes!(queues::list_queues))
        .routes(routes!(queues::pause_queue))
        .routes(routes!(queues::resume_queue))
        .routes(routes!(tenants::list))
        .routes(routes!(plugins::list))
        .routes(routes!(plugins::deploy, plugins::remove))
        .routes(routes!(plugins::rollback))
        .routes(routes!(plugins::delete_version))
        .routes(routes!(kv::list))
        .routes(routes!(kv::get, kv::set, kv::delete))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .split_for_parts()
}

/// The OpenAPI document of the whole API, as `GET /openapi.json` serves it.
pub fn openapi_json() -> String {
    routes().1.to_pretty_json().expect("the OpenAPI document serialises")
}

/// The API's routes, without a socket (tests can call it directly).
pub fn app(state: AppState) -> Router {
    let (router, document) = routes();
    let document: Arc<str> = document.to_pretty_json().expect("the OpenAPI document serialises").into();
    router
        .merge(dashboard::routes())
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], document.to_string()) }
            }),
        )
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.access.clone(), auth::authenticate))
        .layer(axum::middleware::from_fn_with_state(
            browser_guard::AllowedHosts::new(&state.http.allowed_hosts),
            browser_guard::guard,
        ))
        .with_state(state)
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, under the
/// state's connection limits.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    let limits = state.http.clone();
    server::serve(listener, app(state), &limits, shutdown).await
}

async fn no_route(uri: http::Uri) -> AppError {
    AppError::NotFound(format!("no route {}", uri.path()))
}

async fn wrong_method(method: http::Method, uri: http::Uri) -> AppError {
    AppError::MethodNotAllowed(format!("{} does not take {method}", uri.path()))
}
