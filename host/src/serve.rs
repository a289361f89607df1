//! `kiln serve`: the composition root. Opens the store, loads the plugins,
//! starts the dispatcher and the HTTP API, and on SIGTERM/SIGINT shuts down
//! in order: stop claiming, let running jobs finish or interrupt them,
//! write their transitions, then close the API.

use crate::api::{self, AppState};
use crate::config::Config;
use crate::example_services::ExampleServices;
use crate::plugin::{ArtifactCache, Compiler, LoadPolicy, Registry, watch_plugins_dir};
use crate::queue::{JobStore, PostgresStore, SharedClock, SqliteStore, SystemClock};
use crate::sandbox::{PoolSize, Sandbox};
use crate::worker::{Dispatcher, Metrics, SandboxRunner, run_startup_plugins};
use anyhow::Context as _;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

/// The registry for `plugins_dir`, loaded under `policy`: every plugin
/// directory in it that validates serves; one that does not is reported
/// and left out.
pub fn load_registry(sandbox: Arc<Sandbox>, config: &Config, plugins_dir: &Path, policy: LoadPolicy) -> anyhow::Result<Arc<Registry>> {
    let data_dir = &config.data_dir;
    let cache = ArtifactCache::new(data_dir.join("artifacts"));
    let registry = Registry::new(sandbox, cache, plugins_dir.to_path_buf(), data_dir.join("plugin-versions"))
        .with_policy(policy)
        .with_tenants(&config.tenants);
    registry.load_all().with_context(|| format!("cannot read the plugins directory {}", plugins_dir.display()))?;
    Ok(Arc::new(registry))
}

/// The job store the config names: Postgres for a `database_url`, else the
/// SQLite file in the data directory.
pub async fn open_store(config: &Config, clock: SharedClock) -> anyhow::Result<Arc<dyn JobStore>> {
    match &config.database_url {
        Some(url) => {
            let store = PostgresStore::connect(url, &config.database_schema, clock).await?;
            tracing::info!(database = %store.location(), schema = store.schema(), "job store open (Postgres)");
            Ok(Arc::new(store))
        }
        None => {
            let db = config.database_path();
            let store = SqliteStore::open(&db, clock)?;
            tracing::info!(database = %db.display(), "job store open (SQLite)");
            Ok(Arc::new(store))
        }
    }
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

/// Refuses what would serve the API to more callers than its config
/// means to: an address beyond loopback with no API keys, unless
/// `--insecure` says so. A host with no keys on loopback says loudly that
/// every local client may do everything.
fn check_access(config: &Config) -> anyhow::Result<()> {
    if !config.tenants.is_empty() {
        let names: Vec<&str> = config.tenants.keys().map(String::as_str).collect();
        tracing::info!(tenants = %names.join(", "), admin_keys = config.admin.api_keys.len(), "serving tenants: each sees and touches only its own plugins and jobs");
    }
    if !config.admin.api_keys.is_empty() || !config.tenants.is_empty() {
        return Ok(());
    }
    let loopback = config.listen.ip().is_loopback();
    if !loopback && !config.insecure {
        anyhow::bail!(
            "refusing to listen on {} with no API keys: anyone who reaches it could deploy code and read every job. \
             Give [admin] api_keys in kiln.toml (`kiln keys new` makes one), listen on loopback, or pass --insecure",
            config.listen
        );
    }
    tracing::warn!(listen = %config.listen, "the API has no keys ([admin] api_keys in kiln.toml): every client that reaches it may do everything; `kiln keys new` makes one");
    Ok(())
}

/// Runs the host until `shutdown` resolves, then stops it gracefully.
/// Plugins are compiled in child processes of the current executable,
/// which must therefore be `kiln` (it runs `kiln compile-component`).
/// `on_listening` is told the bound address. Start-up plugins run after the
/// API listens (so `/readyz` can say what it waits for) and before any
/// other work starts.
pub async fn serve(
    config: Config,
    plugins_dir: Option<&Path>,
    shutdown: impl Future<Output = ()>,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    check_access(&config)?;
    // Jobs' payloads and results live here: readable by the owner only
    // when Kiln creates it (an existing directory keeps its mode).
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    // Unset: the host's own, in the data directory, seeded with the examples.
    let plugins_dir = match plugins_dir {
        Some(dir) => dir.to_path_buf(),
        None => crate::plugin::seed::default_plugins_dir(&config.data_dir)
            .with_context(|| format!("cannot make the plugins directory in {}", config.data_dir.display()))?,
    };
    let plugins_dir = plugins_dir.as_path();
    let clock: SharedClock = Arc::new(SystemClock);
    let store = open_store(&config, clock.clone()).await?;

    let sandbox = Arc::new(Sandbox::with_pool(PoolSize::for_instances(config.max_instances))?);
    sandbox.set_kv_backend(Arc::new(crate::worker::StoreKv::new(store.clone())));
    // Compiles run in child processes of this binary, killed past their budget.
    let compiler = Compiler::child_process(config.compile.clone()).context("cannot find the kiln executable to compile with")?;
    let mut capabilities = config.capabilities().context("cannot read the values behind [config] and [secrets]")?;
    let _example_services = if config.example_services {
        let services = ExampleServices::start().context("cannot start the example services")?;
        services.lend(&mut capabilities, crate::plugin::seed::example_components());
        tracing::info!(origin = %services.origin(), "example services listening (mail API and feed for the bundled examples; `example_services = false` turns them off)");
        Some(services)
    } else {
        None
    };
    let policy =
        LoadPolicy { ceilings: config.ceilings.clone(), compiler: Arc::new(compiler), capabilities: Arc::new(capabilities), tenant: None, signatures: None };
    let loading = std::time::Instant::now();
    let registry = load_registry(sandbox, &config, plugins_dir, policy)?;
    tracing::info!(dir = %plugins_dir.display(), count = registry.snapshot().len(),
        load_ms = %format!("{:.1}", loading.elapsed().as_secs_f64() * 1000.0), "plugins loaded");
    let _watcher = watch_plugins_dir(registry.clone())
        .with_context(|| format!("cannot watch the plugins directory {}", plugins_dir.display()))?;
    let runner = Arc::new(SandboxRunner::new(registry.clone()));

    let mut settings = config.dispatcher();
    settings.tracing = crate::telemetry::Tracing::start(&config.telemetry, &settings.host)?;
    let tracing_spans = settings.tracing.clone();
    let dispatcher = Dispatcher::new(store, runner.clone(), settings, clock, Arc::new(Metrics::new()));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let jobs = job_runtime().context("cannot start the job runtime")?;
    dispatcher.run_jobs_on(jobs.handle().clone());

    let (readiness, ready) = tokio::sync::watch::channel(Some("running start-up plugins".to_string()));
    let (close_api, api_closed) = tokio::sync::oneshot::channel::<()>();
    let access = api::auth::Access::new(crate::tenant::KeyRing::new(&config.admin.api_keys, &config.tenants));
    let state = AppState {
        service: crate::worker::JobService::new(dispatcher.clone(), registry.clone()),
        registry: registry.clone(),
        not_ready: ready,
        http: config.http.clone(),
        access,
        tenants: Arc::new(config.tenants.clone()),
        sessions: Default::default(),
    };
    let api = tokio::spawn(api::serve(listener, state, async {
        let _ = api_closed.await;
    }));
    tracing::info!(%address, "HTTP API listening");
    on_listening(address);

    let mut shutdown = std::pin::pin!(shutdown);
    let started = tokio::select! {
        started = run_startup_plugins(runner, jobs.handle().clone()) => Some(started),
        () = &mut shutdown => None,
    };
    let running = match started {
        Some(Ok(runs)) => {
            for mut run in runs {
                if let Err(e) = dispatcher.apply_effects(&run.plugin, &mut run.report).await {
                    tracing::error!(plugin = %run.plugin, "what this start-up plugin wrote to kv or enqueued was not stored: {e}");
                }
            }
            readiness.send_replace(None);
            Some(dispatcher.start())
        }
        Some(Err(failed)) => {
            let _ = close_api.send(());
            let _ = api.await;
            jobs.shutdown_background();
            return Err(failed.into());
        }
        None => None,
    };
    if let Some(running) = running {
        shutdown.await;
        tracing::info!("shutdown requested");
        readiness.send_replace(Some("shutting down".to_string()));
        dispatcher.shutdown().await;
        running.stopped().await;
    }
    let _ = close_api.send(());
    api.await.context("the API task failed")?.context("the API server failed")?;
    // Every run has ended; nothing is left on it to wait for.
    jobs.shutdown_background();
    // The last runs' spans, sent before the process ends (off the async
    // threads: the exporter blocks while it sends).
    tokio::task::spawn_blocking(move || tracing_spans.shutdown()).await.context("the trace exporter's shutdown failed")?;
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
