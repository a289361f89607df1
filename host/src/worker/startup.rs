//! Start-up plugins: the `IHostedService.StartAsync` warm-up. Each runs
//! once per host start, in name order, before any queued, scheduled or
//! continuous work begins (and before `/readyz` says ready). One attempt
//! each; a failure is logged with its outcome, and stops the host when the
//! plugin's manifest says `on_failure = "stop-host"` (the default).

use super::runner::Runner;
use crate::plugin::trigger::{OnFailure, Trigger};
use crate::sandbox::{JobInput, Outcome};
use std::sync::Arc;

/// A start-up plugin that failed and asked to stop the host.
#[derive(Debug, thiserror::Error)]
#[error("start-up plugin {plugin:?} failed ({outcome}): {message}; its manifest says on_failure = \"stop-host\", so the host stops")]
pub struct StartupFailed {
    pub plugin: String,
    pub outcome: &'static str,
    pub message: String,
}

/// What one start-up plugin did.
#[derive(Debug, Clone)]
pub struct StartupRun {
    pub plugin: String,
    pub ok: bool,
    pub duration: std::time::Duration,
    /// The run, with what an `ok` one changed (kv writes, enqueued jobs):
    /// the caller applies it before other work starts.
    pub report: crate::sandbox::Report,
}

/// Runs every start-up plugin the runner knows, once, on `runtime`.
pub async fn run_startup_plugins(runner: Arc<dyn Runner>, runtime: tokio::runtime::Handle) -> Result<Vec<StartupRun>, StartupFailed> {
    let mut runs = Vec::new();
    for name in runner.kinds() {
        let Some(Trigger::Startup { on_failure }) = runner.kind(&name).map(|k| k.trigger) else { continue };
        tracing::info!(plugin = %name, "running start-up plugin");
        let input = JobInput { id: format!("startup:{name}"), kind: name.clone(), attempt: 1, max_attempts: 1, payload: Vec::new(), checkpoint: None, progress: Default::default(), traceparent: None };
        let task_runner = runner.clone();
        let ran = runtime
            .spawn(async move {
                let stop = task_runner.stop_signal();
                task_runner.run(&input, &stop).await
            })
            .await;
        let report = match ran {
            Ok(ran) => ran.report,
            Err(e) => crate::sandbox::Report::without_cost(Outcome::Fatal(format!("the start-up task failed: {e}"))),
        };
        let ok = matches!(report.outcome, Outcome::Ok(_));
        runs.push(StartupRun { plugin: name.clone(), ok, duration: report.duration, report: report.clone() });
        if ok {
            tracing::info!(plugin = %name, duration_ms = %format_args!("{:.1}", report.duration.as_secs_f64() * 1000.0), "start-up plugin finished");
            continue;
        }
        let message = report.outcome.error_message().unwrap_or_default();
        match on_failure {
            OnFailure::StopHost => {
                tracing::error!(plugin = %name, outcome = report.outcome.name(), "start-up plugin failed: {message}");
                return Err(StartupFailed { plugin: name, outcome: report.outcome.name(), message });
            }
            OnFailure::Continue => tracing::error!(plugin = %name, outcome = report.outcome.name(),
                "start-up plugin failed: {message}; its manifest says on_failure = \"continue\", so the host serves anyway"),
        }
    }
    Ok(runs)
}
