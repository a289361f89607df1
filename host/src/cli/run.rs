//! `kiln run`: one iteration of a plugin here, under its budget and the
//! grants the flags give, and the report of what it did and cost.

use super::common::{CommonArgs, EXIT_NOT_OK};
use super::local::load;
use crate::capability::{ConfigValues, HostCapabilities};
use crate::example_services::ExampleServices;
use crate::plugin::{self, Plugin};
use crate::queue::{JobStore, SqliteStore, SystemClock};
use crate::sandbox::{Budget, JobInput, Outcome, PoolSize, Report, Sandbox};
use anyhow::Context as _;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    /// A .wasm file, a plugin directory, a plugin source directory, or a plugin name.
    pub(crate) plugin: String,
    /// The job's payload: JSON text, or @FILE to read it from a file.
    #[arg(long, default_value = "")]
    pub(crate) payload: String,
    /// The previous run's checkpoint (JSON text, or @FILE), as a scheduled or
    /// continuous plugin would receive it.
    #[arg(long)]
    pub(crate) checkpoint: Option<String>,
    /// Fuel budget (≈ wasm instructions) [default: the manifest's].
    #[arg(long)]
    pub(crate) fuel: Option<u64>,
    /// Memory budget in MiB [default: the manifest's].
    #[arg(long)]
    pub(crate) memory_mib: Option<u64>,
    /// Wall-clock budget in milliseconds [default: the manifest's].
    #[arg(long)]
    pub(crate) timeout_ms: Option<u64>,
    #[command(flatten)]
    pub(crate) grants: GrantArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// What `kiln run` and `kiln plugin check` allow, the way a host's
/// `kiln.toml` would: the plugin gets what its manifest asks for of it.
#[derive(Args, Debug, Default)]
pub(crate) struct GrantArgs {
    /// An origin the plugin may send HTTP requests to if its manifest asks
    /// (`scheme://host[:port|:*]`), as `[capabilities] allow_http` in
    /// kiln.toml; repeatable.
    #[arg(long = "allow-http", value_name = "ORIGIN")]
    pub(crate) allow_http: Vec<String>,
    /// A config value the plugin may read if its manifest names KEY
    /// (`[capabilities] config`); repeatable.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
    pub(crate) config: Vec<(String, String)>,
    /// A secret, read like a config value and redacted wherever Kiln writes
    /// text; repeatable.
    #[arg(long = "secret", value_name = "KEY=VALUE", value_parser = key_value)]
    pub(crate) secrets: Vec<(String, String)>,
    /// Keep the plugin's kv stores in this directory (`DIR/kv.db`) across
    /// runs, as a host keeps them in its database [default: a fresh, empty
    /// store for this run alone].
    #[arg(long = "kv", value_name = "DIR")]
    pub(crate) kv_dir: Option<PathBuf>,
}

pub(crate) fn key_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) => Ok((key.to_string(), value.to_string())),
        None => Err(format!("{arg:?} is not KEY=VALUE")),
    }
}

impl GrantArgs {
    /// The host these flags describe, lending the bundled examples the
    /// example services as `kiln serve` does (they stop when the returned
    /// handle is dropped). Needs a tokio runtime.
    pub(crate) fn host(&self) -> anyhow::Result<(HostCapabilities, Option<ExampleServices>)> {
        let mut plain = std::collections::BTreeMap::new();
        for (key, value) in &self.config {
            anyhow::ensure!(plain.insert(key.clone(), value.clone()).is_none(), "--config {key} is given twice");
        }
        let mut secrets = std::collections::BTreeMap::new();
        for (key, value) in &self.secrets {
            anyhow::ensure!(secrets.insert(key.clone(), value.clone()).is_none(), "--secret {key} is given twice");
        }
        let config = ConfigValues::from_values(plain, secrets).map_err(|e| anyhow::anyhow!("--config/--secret {e}"))?;
        let mut policy = crate::capability::HostPolicy::default();
        for origin in &self.allow_http {
            policy.allow_http.push(origin.parse().map_err(|e| anyhow::anyhow!("--allow-http {e}"))?);
        }
        let mut host = HostCapabilities { config, policy, ..HostCapabilities::default() };
        // Without them the examples that talk HTTP are refused; nothing else is.
        let services = match ExampleServices::start() {
            Ok(services) => {
                services.lend(&mut host, plugin::seed::example_components());
                Some(services)
            }
            Err(e) => {
                tracing::warn!("cannot start the example services (a loopback port): {e}");
                None
            }
        };
        Ok((host, services))
    }
}

pub(crate) async fn run(common: &CommonArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    let payload = text_or_file(args.payload, "--payload")?;
    let checkpoint = args.checkpoint.map(|c| text_or_file(c, "--checkpoint")).transpose()?;
    let sandbox = Sandbox::with_pool(PoolSize::for_one_run())?;
    let (host, _services) = args.grants.host()?;
    let plugin = load(common, &sandbox, &args.plugin, host)?;
    // The kv stores: a Kiln database of their own, in --kv DIR or for this run only.
    let scratch = tempfile::tempdir().context("cannot make a directory for this run's kv store")?;
    let kv_dir = args.grants.kv_dir.clone().unwrap_or_else(|| scratch.path().to_path_buf());
    std::fs::create_dir_all(&kv_dir).with_context(|| format!("--kv: cannot create {}", kv_dir.display()))?;
    let kv_store: Arc<dyn JobStore> = Arc::new(
        SqliteStore::open(&kv_dir.join("kv.db"), Arc::new(SystemClock)).with_context(|| format!("--kv: cannot open the store in {}", kv_dir.display()))?,
    );
    sandbox.set_kv_backend(Arc::new(crate::worker::StoreKv::new(kv_store.clone())));
    let mut budget: Budget = plugin.manifest.budget();
    if let Some(fuel) = args.fuel {
        anyhow::ensure!(fuel > 0, "--fuel must be greater than zero");
        budget.fuel = fuel;
    }
    if let Some(mib) = args.memory_mib {
        let max = crate::sandbox::MAX_MEMORY_BYTES >> 20;
        anyhow::ensure!((1..=max).contains(&mib), "--memory-mib must be between 1 and {max}");
        budget.memory_bytes = mib << 20;
    }
    if let Some(ms) = args.timeout_ms {
        anyhow::ensure!(ms > 0, "--timeout-ms must be greater than zero");
        budget.timeout = Duration::from_millis(ms);
    }
    budget.check_payload(&payload).context("--payload")?;
    // As the API stores it: JSON, or nothing.
    if !payload.is_empty() {
        serde_json::from_slice::<serde::de::IgnoredAny>(&payload).context("--payload is not JSON")?;
    }

    let job = JobInput {
        id: "local-run".to_string(),
        kind: plugin.manifest.name.clone(),
        attempt: 1,
        max_attempts: plugin.manifest.retry.max_attempts,
        payload,
        checkpoint,
        progress: Default::default(),
        traceparent: None,
    };
    let stop = sandbox.stop_signal();
    let report = sandbox.run_iteration(&plugin.component, &job, &budget, &stop).await;
    // As a host would, with the run's completion: only an `ok` run has writes.
    let writes = crate::worker::effects::kv_writes(&plugin.manifest.name, report.kv_writes.clone());
    if !writes.is_empty() {
        kv_store.write_kv(writes).await.context("the run's kv writes could not be stored")?;
    }
    if args.json {
        println!("{}", report_json(&plugin, &report));
    } else {
        print_report(&report);
    }
    Ok(if report.outcome.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NOT_OK) })
}

/// The argument's bytes, or the contents of the file it names after `@`.
pub(crate) fn text_or_file(arg: String, flag: &str) -> anyhow::Result<Vec<u8>> {
    match arg.strip_prefix('@') {
        Some(file) => std::fs::read(file).with_context(|| format!("{flag}: cannot read {file}")),
        None => Ok(arg.into_bytes()),
    }
}

/// The result bytes as JSON when they are JSON, else as (lossy) text.
pub(crate) fn output_value(output: &[u8]) -> serde_json::Value {
    serde_json::from_slice(output).unwrap_or_else(|_| String::from_utf8_lossy(output).into_owned().into())
}

pub(crate) fn report_json(plugin: &Plugin, report: &Report) -> serde_json::Value {
    let output = match &report.outcome {
        Outcome::Ok(bytes) => output_value(bytes),
        _ => serde_json::Value::Null,
    };
    let trap = match &report.outcome {
        Outcome::Trapped { trap: Some(trap), .. } => serde_json::Value::String(format!("{trap:?}")),
        _ => serde_json::Value::Null,
    };
    let logs: Vec<serde_json::Value> = report
        .logs
        .iter()
        .map(|l| serde_json::json!({ "source": format!("{:?}", l.source).to_lowercase(), "level": l.level.as_str(), "message": l.message }))
        .collect();
    serde_json::json!({
        "outcome": report.outcome.name(),
        "output": output,
        "fuel_used": report.fuel_used,
        "peak_memory_bytes": report.peak_memory_bytes,
        "duration_ms": report.duration.as_secs_f64() * 1000.0,
        "error": report.outcome.error_message(),
        "trap": trap,
        "progress": report.progress.as_ref().map(|p| p.percent),
        "progress_note": report.progress.as_ref().and_then(|p| p.note.as_deref()),
        "logs": logs,
        "log_bytes_dropped": report.log_bytes_dropped,
        "enqueued": report.enqueued.iter().map(child_json).collect::<Vec<_>>(),
        "kv_writes": report.kv_writes.iter().map(kv_write_json).collect::<Vec<_>>(),
        "http_requests": report.http.requests,
        "http_bytes_sent": report.http.bytes_sent,
        "http_bytes_received": report.http.bytes_received,
        "plugin": {
            "name": plugin.manifest.name,
            "version": plugin.manifest.version,
            "sha256": plugin.wasm_sha256,
            "artifact_cache": format!("{:?}", plugin.cache).to_lowercase(),
        },
    })
}

/// A job the run enqueued, as `kiln run --json` reports it (nothing is
/// inserted: `kiln run` has no queue).
pub(crate) fn child_json(child: &crate::capability::ChildJob) -> serde_json::Value {
    let (delay_ms, scheduled_at) = match child.due {
        Some(crate::capability::Due::After(d)) => (Some(d.as_millis() as u64), None),
        Some(crate::capability::Due::At(at)) => (None, Some(crate::queue::to_rfc3339(at))),
        None => (None, None),
    };
    serde_json::json!({
        "kind": child.kind,
        "payload": output_value(&child.payload),
        "queue": child.queue.as_deref().unwrap_or(crate::queue::DEFAULT_QUEUE),
        "priority": child.priority.unwrap_or(0),
        "delay_ms": delay_ms,
        "scheduled_at": scheduled_at,
        "unique_key": child.unique_key,
    })
}

/// A kv write of the run, as `kiln run --json` reports it.
pub(crate) fn kv_write_json(write: &crate::capability::KvEffect) -> serde_json::Value {
    use crate::capability::kv::KvChange;
    let (op, bytes, by) = match &write.change {
        KvChange::Set(value) => ("set", Some(value.len()), None),
        KvChange::Delete => ("delete", None, None),
        KvChange::Add(delta) => ("add", None, Some(*delta)),
    };
    serde_json::json!({ "store": write.store, "key": write.key, "op": op, "bytes": bytes, "by": by })
}

pub(crate) fn print_report(report: &Report) {
    println!("outcome:     {}", report.outcome.name());
    if let Outcome::Ok(bytes) = &report.outcome {
        println!("output:      {}", String::from_utf8_lossy(bytes));
    }
    if let Some(error) = report.outcome.error_message() {
        println!("error:       {error}");
    }
    println!("fuel used:   {}", report.fuel_used);
    println!("peak memory: {:.1} MiB ({} bytes)", report.peak_memory_bytes as f64 / (1 << 20) as f64, report.peak_memory_bytes);
    println!("duration:    {:.3} ms", report.duration.as_secs_f64() * 1000.0);
    if report.log_bytes_dropped > 0 {
        println!("logs:        {} bytes dropped past the per-run cap", report.log_bytes_dropped);
    }
    if report.http.requests > 0 {
        println!("http:        {} requests, {} bytes sent, {} received", report.http.requests, report.http.bytes_sent, report.http.bytes_received);
    }
    if !report.kv_writes.is_empty() {
        println!("kv writes:   {} keys", report.kv_writes.len());
    }
    if !report.enqueued.is_empty() {
        let mut kinds: Vec<&str> = report.enqueued.iter().map(|c| c.kind.as_str()).collect();
        kinds.dedup();
        println!("enqueued:    {} jobs ({}); a host inserts them when the run completes ok", report.enqueued.len(), kinds.join(", "));
    }
}
