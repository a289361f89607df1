//! `kiln serve`: the composition root. Opens the store, loads the plugins,
//! starts the dispatcher and the HTTP API, and on SIGTERM/SIGINT shuts down
//! in order: stop claiming, let running jobs finish or interrupt them,
//! write their transitions, then close the API.

use crate::api::{self, AppState};
use crate::config::Config;
use crate::plugin::{self, ArtifactCache, MANIFEST_FILE, Plugin};
use crate::queue::{SharedClock, SqliteStore, SystemClock};
use crate::sandbox::Sandbox;
use crate::worker::{Dispatcher, Metrics, SandboxRunner};
use anyhow::Context as _;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

/// Loads every plugin directory under `dir`. A plugin that fails to load is
/// reported and left out; the others serve.
pub fn load_plugins(sandbox: &Sandbox, cache: &ArtifactCache, dir: &Path) -> anyhow::Result<BTreeMap<String, Arc<Plugin>>> {
    let mut plugins = BTreeMap::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read the plugins directory {}", dir.display()))?;
    let mut dirs: Vec<_> = entries.filter_map(|e| Some(e.ok()?.path())).filter(|p| p.join(MANIFEST_FILE).is_file()).collect();
    dirs.sort();
    for path in dirs {
        let loaded = plugin::resolve(&path.display().to_string(), &[]).and_then(|files| plugin::load(sandbox, Some(cache), &files));
        match loaded {
            Ok(p) => {
                tracing::info!(plugin = %p.manifest.name, version = %p.manifest.version, cache = ?p.cache,
                    load_ms = p.load_time.as_secs_f64() * 1000.0, "plugin loaded");
                if let Some(previous) = plugins.insert(p.manifest.name.clone(), Arc::new(p)) {
                    tracing::error!(plugin = %previous.manifest.name, "two plugin directories share a name; the later one wins");
                }
            }
            Err(e) => tracing::error!(dir = %path.display(), "plugin refused: {e}"),
        }
    }
    Ok(plugins)
}

/// The runtime job iterations run on: one worker per core, apart from the
/// runtime of the API and the dispatcher's control loops. A guest yields
/// only once per epoch tick, and tokio polls for I/O only every few dozen
/// task polls, so on a shared runtime a busy core delays a health check by
/// tens of milliseconds; on separate threads the kernel schedules the idle
/// control plane as soon as it has work.
pub fn job_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::runtime::Builder::new_multi_thread().worker_threads(cores).thread_name("kiln-job").enable_all().build()
}

/// Runs the host until `shutdown` resolves, then stops it gracefully.
/// `on_listening` is told the bound address.
pub async fn serve(
    config: Config,
    plugins_dir: &Path,
    shutdown: impl Future<Output = ()>,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    let clock: SharedClock = Arc::new(SystemClock);
    let db = config.database_path();
    let store = SqliteStore::open(&db, clock.clone())?;
    tracing::info!(database = %db.display(), "job store open");

    let sandbox = Arc::new(Sandbox::new()?);
    let cache = ArtifactCache::new(config.data_dir.join("artifacts"));
    let plugins = load_plugins(&sandbox, &cache, plugins_dir)?;
    tracing::info!(dir = %plugins_dir.display(), count = plugins.len(), "plugins loaded");
    let runner = Arc::new(SandboxRunner::new(sandbox, Arc::new(plugins)));

    let dispatcher = Dispatcher::new(Arc::new(store), runner, config.dispatcher(), clock, Arc::new(Metrics::new()));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let jobs = job_runtime().context("cannot start the job runtime")?;
    dispatcher.run_jobs_on(jobs.handle().clone());
    let running = dispatcher.start();

    let (close_api, api_closed) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(api::serve(listener, AppState { dispatcher: dispatcher.clone() }, async {
        let _ = api_closed.await;
    }));
    tracing::info!(%address, "HTTP API listening");
    on_listening(address);

    shutdown.await;
    tracing::info!("shutdown requested");
    dispatcher.shutdown().await;
    running.stopped().await;
    let _ = close_api.send(());
    api.await.context("the API task failed")?.context("the API server failed")?;
    // Every run has ended; nothing is left on it to wait for.
    jobs.shutdown_background();
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("cannot install the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("cannot install the SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
