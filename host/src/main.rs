//! The `kiln` command line: parses arguments and calls the library.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kiln::plugin::{self, ArtifactCache, Plugin};
use kiln::sandbox::{Budget, JobInput, Outcome, Report, Sandbox};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code for a run whose outcome was not `ok`.
const EXIT_NOT_OK: u8 = 1;
/// Exit code for bad input: an unloadable plugin, a bad payload, bad flags.
const EXIT_BAD_INPUT: u8 = 2;

#[derive(Parser, Debug)]
#[command(name = "kiln", version, about = "Background jobs as sandboxed WebAssembly components")]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct CommonArgs {
    /// Where plugins are looked up by name (one directory per plugin).
    /// Defaults to the example plugins built with this binary.
    #[arg(long, global = true, env = "KILN_PLUGINS_DIR")]
    plugins_dir: Option<PathBuf>,
    /// Where compiled plugins are cached [default: $XDG_CACHE_HOME/kiln or ~/.cache/kiln].
    #[arg(long, global = true, env = "KILN_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile plugins every time instead of using the artifact cache.
    #[arg(long, global = true)]
    no_cache: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one iteration of a plugin and report what it cost.
    Run(RunArgs),
    /// Work with plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Validate a plugin (manifest and component) without running it.
    Check {
        /// A .wasm file, a plugin directory, a plugin source directory, or a plugin name.
        plugin: String,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// A .wasm file, a plugin directory, a plugin source directory, or a plugin name.
    plugin: String,
    /// The job's payload: JSON text, or @FILE to read it from a file.
    #[arg(long, default_value = "")]
    payload: String,
    /// The previous run's checkpoint (JSON text, or @FILE), as a scheduled or
    /// continuous plugin would receive it.
    #[arg(long)]
    checkpoint: Option<String>,
    /// Fuel budget (≈ wasm instructions) [default: the manifest's].
    #[arg(long)]
    fuel: Option<u64>,
    /// Memory budget in MiB [default: the manifest's].
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Wall-clock budget in milliseconds [default: the manifest's].
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| "info".into()),
        )
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", error_chain(&error));
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// The error and its causes, skipping causes whose text the message already
/// carries (our error types embed their source in their message).
fn error_chain(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run(&cli.common, args).await,
        Command::Plugin(PluginCommand::Check { plugin }) => check(&cli.common, &plugin),
    }
}

fn plugin_dirs(common: &CommonArgs) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    dirs.extend(common.plugins_dir.clone());
    dirs.push(PathBuf::from(plugin::built::EXAMPLES_DIR));
    dirs.push(PathBuf::from(plugin::built::TESTING_DIR));
    dirs
}

fn artifact_cache(common: &CommonArgs) -> Option<ArtifactCache> {
    if common.no_cache {
        return None;
    }
    let dir = common.cache_dir.clone().or_else(|| {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("kiln"))
    })?;
    Some(ArtifactCache::new(dir))
}

fn load(common: &CommonArgs, sandbox: &Sandbox, spec: &str) -> anyhow::Result<Plugin> {
    let files = plugin::resolve(spec, &plugin_dirs(common))?;
    Ok(plugin::load(sandbox, artifact_cache(common).as_ref(), &files)?)
}

fn check(common: &CommonArgs, spec: &str) -> anyhow::Result<ExitCode> {
    let sandbox = Sandbox::new()?;
    let plugin = load(common, &sandbox, spec)?;
    let m = &plugin.manifest;
    println!("ok: {} {} implements {}", m.name, m.version, kiln::sandbox::WORLD);
    println!("  component: {} (sha256 {})", plugin.wasm_path.display(), plugin.wasm_sha256);
    println!(
        "  limits: fuel {}, memory {} MiB, timeout {} ms; retry: {} attempts",
        m.limits.fuel, m.limits.memory_mib, m.limits.timeout_ms, m.retry.max_attempts
    );
    Ok(ExitCode::SUCCESS)
}

async fn run(common: &CommonArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    let payload = text_or_file(args.payload, "--payload")?;
    let checkpoint = args.checkpoint.map(|c| text_or_file(c, "--checkpoint")).transpose()?;
    let sandbox = Sandbox::new()?;
    let plugin = load(common, &sandbox, &args.plugin)?;
    let mut budget: Budget = plugin.manifest.budget();
    if let Some(fuel) = args.fuel {
        anyhow::ensure!(fuel > 0, "--fuel must be greater than zero");
        budget.fuel = fuel;
    }
    if let Some(mib) = args.memory_mib {
        let max = kiln::sandbox::MAX_MEMORY_BYTES >> 20;
        anyhow::ensure!((1..=max).contains(&mib), "--memory-mib must be between 1 and {max}");
        budget.memory_bytes = mib << 20;
    }
    if let Some(ms) = args.timeout_ms {
        anyhow::ensure!(ms > 0, "--timeout-ms must be greater than zero");
        budget.timeout = Duration::from_millis(ms);
    }
    budget.check_payload(&payload).context("--payload")?;

    let job = JobInput {
        id: "local-run".to_string(),
        kind: plugin.manifest.name.clone(),
        attempt: 1,
        max_attempts: plugin.manifest.retry.max_attempts,
        payload,
        checkpoint,
    };
    let stop = sandbox.stop_signal();
    let report = sandbox.run_iteration(&plugin.component, &job, &budget, &stop).await;
    if args.json {
        println!("{}", report_json(&plugin, &report));
    } else {
        print_report(&report);
    }
    Ok(if report.outcome.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_NOT_OK) })
}

/// The argument's bytes, or the contents of the file it names after `@`.
fn text_or_file(arg: String, flag: &str) -> anyhow::Result<Vec<u8>> {
    match arg.strip_prefix('@') {
        Some(file) => std::fs::read(file).with_context(|| format!("{flag}: cannot read {file}")),
        None => Ok(arg.into_bytes()),
    }
}

/// The result bytes as JSON when they are JSON, else as (lossy) text.
fn output_value(output: &[u8]) -> serde_json::Value {
    serde_json::from_slice(output).unwrap_or_else(|_| String::from_utf8_lossy(output).into_owned().into())
}

fn report_json(plugin: &Plugin, report: &Report) -> serde_json::Value {
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
        "progress": report.progress,
        "logs": logs,
        "log_bytes_dropped": report.log_bytes_dropped,
        "plugin": {
            "name": plugin.manifest.name,
            "version": plugin.manifest.version,
            "sha256": plugin.wasm_sha256,
            "artifact_cache": format!("{:?}", plugin.cache).to_lowercase(),
        },
    })
}

fn print_report(report: &Report) {
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
}
