//! The `kiln` command line: parses arguments and calls the library.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kiln::client::{ApiClient, DEFAULT_API, render};
use kiln::capability::{ConfigValues, Grants, HostCapabilities};
use kiln::config::Config;
use kiln::example_services::ExampleServices;
use kiln::plugin::{self, ArtifactCache, CompileBudget, Compiler, LoadPolicy, Plugin};
use kiln::sandbox::{Budget, JobInput, Outcome, PoolSize, Report, Sandbox};
use kiln::queue::{JobStore, SqliteStore, SystemClock};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
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
    /// One directory per plugin. `kiln serve` serves (and deploys into) it
    /// [default: DATA_DIR/plugins, made with the built-in examples the
    /// first time]; `kiln run NAME` looks NAME up in it before the examples.
    #[arg(long, global = true, env = "KILN_PLUGINS_DIR")]
    plugins_dir: Option<PathBuf>,
    /// Where compiled plugins are cached [default: $XDG_CACHE_HOME/kiln or ~/.cache/kiln].
    #[arg(long, global = true, env = "KILN_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile plugins every time instead of using the artifact cache.
    #[arg(long, global = true)]
    no_cache: bool,
    /// The Kiln API that `enqueue`, `jobs`, `queues` and `plugin list|deploy|rollback|remove` talk to.
    #[arg(long, global = true, env = "KILN_API", default_value = DEFAULT_API)]
    api: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run one iteration of a plugin and report what it cost.
    Run(RunArgs),
    /// Run the host: the job queue, the workers and the HTTP API.
    Serve(ServeArgs),
    /// Enqueue a job through the API.
    Enqueue(EnqueueArgs),
    /// Inspect and act on jobs through the API.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Pause and resume queues through the API.
    #[command(subcommand)]
    Queues(QueuesCommand),
    /// Work with plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Read and change a plugin's kv stores through the API.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Make API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Compile one component to an artifact (the host runs this in a child
    /// process, to bound what compiling costs).
    #[command(name = "compile-component", hide = true)]
    CompileComponent {
        #[arg(long)]
        out: PathBuf,
        wasm: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Print a fresh API key and its hash: the hash goes in kiln.toml
    /// (`[admin] api_keys`), the key to the client (`KILN_API_KEY`), once.
    /// With --signing: write a fresh ed25519 signing key to --out (mode
    /// 0600) and print its public key, for `[tenants.NAME] signing_keys`.
    New {
        #[arg(long)]
        json: bool,
        /// Make a plugin signing key instead of an API key.
        #[arg(long, requires = "out")]
        signing: bool,
        /// Where the signing key's private half goes (created; an existing file is refused).
        #[arg(long, requires = "signing")]
        out: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// The config file [default: ./kiln.toml if it exists].
    #[arg(long, env = "KILN_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the HTTP API (overrides `listen`).
    #[arg(long, env = "KILN_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Directory of the database and the artifact cache (overrides `data_dir`).
    #[arg(long, env = "KILN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keep jobs in this Postgres database, `postgres://...` (overrides
    /// `database_url`; unset: the embedded SQLite file).
    #[arg(long, env = "KILN_DATABASE_URL")]
    database_url: Option<String>,
    /// Listen beyond loopback although no API keys are configured.
    #[arg(long)]
    insecure: bool,
}

#[derive(Args, Debug)]
struct EnqueueArgs {
    /// The job's kind: a loaded plugin's name.
    kind: String,
    /// The payload: JSON text, or @FILE.
    #[arg(long)]
    payload: Option<String>,
    /// The queue to put it in [default: default].
    #[arg(long)]
    queue: Option<String>,
    /// Higher runs first [default: 0].
    #[arg(long)]
    priority: Option<i32>,
    /// A job with this key already waiting or done makes this a no-op (at most 512 bytes).
    #[arg(long)]
    unique_key: Option<String>,
    /// Its group under the plugin's `[throttle] max_per_key` (a customer id, say; at most 256 bytes).
    #[arg(long)]
    concurrency_key: Option<String>,
    /// Runs before it is dead-lettered, 1–1000 [default: the plugin's].
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Run no earlier than this RFC 3339 time, with an offset (2030-01-01T09:00:00+02:00).
    #[arg(long)]
    at: Option<String>,
    #[command(flatten)]
    json: JsonOutput,
}

#[derive(Subcommand, Debug)]
enum JobsCommand {
    /// List jobs, newest first, as a table (id, kind, queue, state, attempt, age, last error).
    List {
        /// Only jobs in this state: scheduled, available, running, retryable, completed, cancelled, dead.
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only jobs of this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Jobs per page (at most 1000).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// The next page: only jobs older than this id (the previous page says which).
        #[arg(long)]
        before: Option<i64>,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Show one job: its state, payload, result, progress and every attempt.
    Show {
        id: i64,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Print the log lines a job's attempts wrote (`context.log`, stdout, stderr).
    Logs {
        id: i64,
        /// Only this attempt's lines.
        #[arg(long)]
        attempt: Option<u32>,
        /// Keep printing lines as attempts end, until the job is done.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Follow a job until it is done: its state and progress as a bar (a
    /// line per change when not on a terminal). Exits 0 once it completed,
    /// 1 if it ended dead or cancelled.
    Watch { id: i64 },
    /// Run a dead or cancelled job again (or, with --all-dead, every dead job).
    Retry(PickJobs),
    /// Delete a dead or cancelled job (or, with --all-dead, every dead job).
    Delete(PickJobs),
    /// Cancel a job (a running one is asked to stop, then interrupted).
    Cancel {
        id: i64,
        #[command(flatten)]
        json: JsonOutput,
    },
}

/// `--json`, on every command that talks to the API.
#[derive(Args, Debug, Clone, Copy)]
struct JsonOutput {
    /// Print the API's JSON answer instead of the text for people (for scripts).
    #[arg(long = "json")]
    on: bool,
}

/// One job by id, or every dead job (of a kind, a queue).
#[derive(Args, Debug)]
struct PickJobs {
    /// The job.
    #[arg(required_unless_present = "all_dead", conflicts_with = "all_dead")]
    id: Option<i64>,
    /// Every dead job (of --kind and --queue, if given), up to 10,000 a call.
    #[arg(long)]
    all_dead: bool,
    /// With --all-dead: only dead jobs of this kind.
    #[arg(long, requires = "all_dead")]
    kind: Option<String>,
    /// With --all-dead: only dead jobs of this queue.
    #[arg(long, requires = "all_dead")]
    queue: Option<String>,
    #[command(flatten)]
    json: JsonOutput,
}

impl PickJobs {
    /// The query naming every dead job picked.
    fn dead_query(&self) -> String {
        let mut query = "state=dead".to_string();
        for (key, value) in [("kind", &self.kind), ("queue", &self.queue)] {
            if let Some(value) = value {
                query.push_str(&format!("&{key}={value}"));
            }
        }
        query
    }
}

#[derive(Subcommand, Debug)]
enum QueuesCommand {
    /// List the queues: concurrency, paused, jobs by state, oldest wait.
    List {
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Stop claiming jobs from a queue (running jobs finish).
    Pause {
        name: String,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Claim jobs from a queue again.
    Resume {
        name: String,
        #[command(flatten)]
        json: JsonOutput,
    },
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Sign a plugin directory (its component and manifest) with a key
    /// from `kiln keys new --signing`: writes DIR/plugin.sig, which
    /// `kiln plugin deploy DIR` and the plugins directory pick up.
    Sign {
        /// The plugin directory: plugin.toml and one .wasm.
        dir: PathBuf,
        /// The signing key file.
        #[arg(long)]
        key: PathBuf,
    },
    /// Validate a plugin (manifest and component) without running it, and
    /// say what it imports and what it would be granted.
    Check {
        /// A .wasm file, a plugin directory, a plugin source directory, or a plugin name.
        plugin: String,
        #[command(flatten)]
        grants: GrantArgs,
    },
    /// Write a new plugin crate: manifest, SDK dependency, a job function, a test.
    New {
        /// The plugin's name (a-z, 0-9, `-`, `_`).
        name: String,
        /// Where to write it [default: ./NAME].
        #[arg(long)]
        path: Option<PathBuf>,
        /// The Kiln SDK crate [default: the one this binary was built beside].
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// List the plugins a running host serves, with their versions.
    List {
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Send a new version to a running host; it serves from the next job on.
    Deploy {
        /// A plugin directory, a plugin source directory, or a .wasm with a plugin.toml beside it.
        plugin: String,
        /// Deploy as this name [default: the manifest's]; the host refuses a mismatch.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Serve the previous version of a plugin again.
    Rollback {
        name: String,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Stop serving a plugin (refused while jobs of its kind are pending, unless --force).
    Remove {
        name: String,
        /// Remove it even though jobs of its kind wait; they fail when claimed.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        json: JsonOutput,
    },
}

#[derive(Subcommand, Debug)]
enum KvCommand {
    /// List a store's keys and values, in byte order.
    List {
        plugin: String,
        /// Only keys that start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        #[command(flatten)]
        store: KvStoreArg,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Print one key's value.
    Get {
        plugin: String,
        key: String,
        #[command(flatten)]
        store: KvStoreArg,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Set a key (the value as text, or @FILE).
    Set {
        plugin: String,
        key: String,
        value: String,
        #[command(flatten)]
        store: KvStoreArg,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Delete a key.
    Delete {
        plugin: String,
        key: String,
        #[command(flatten)]
        store: KvStoreArg,
        #[command(flatten)]
        json: JsonOutput,
    },
}

/// Which of the plugin's stores.
#[derive(Args, Debug)]
struct KvStoreArg {
    /// The store [default: default].
    #[arg(long = "store", default_value = "default")]
    name: String,
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
    #[command(flatten)]
    grants: GrantArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// What `kiln run` and `kiln plugin check` allow, the way a host's
/// `kiln.toml` would: the plugin gets what its manifest asks for of it.
#[derive(Args, Debug, Default)]
struct GrantArgs {
    /// An origin the plugin may send HTTP requests to if its manifest asks
    /// (`scheme://host[:port|:*]`), as `[capabilities] allow_http` in
    /// kiln.toml; repeatable.
    #[arg(long = "allow-http", value_name = "ORIGIN")]
    allow_http: Vec<String>,
    /// A config value the plugin may read if its manifest names KEY
    /// (`[capabilities] config`); repeatable.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = key_value)]
    config: Vec<(String, String)>,
    /// A secret, read like a config value and redacted wherever Kiln writes
    /// text; repeatable.
    #[arg(long = "secret", value_name = "KEY=VALUE", value_parser = key_value)]
    secrets: Vec<(String, String)>,
    /// Keep the plugin's kv stores in this directory (`DIR/kv.db`) across
    /// runs, as a host keeps them in its database [default: a fresh, empty
    /// store for this run alone].
    #[arg(long = "kv", value_name = "DIR")]
    kv_dir: Option<PathBuf>,
}

fn key_value(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) => Ok((key.to_string(), value.to_string())),
        None => Err(format!("{arg:?} is not KEY=VALUE")),
    }
}

impl GrantArgs {
    /// The host these flags describe, lending the bundled examples the
    /// example services as `kiln serve` does (they stop when the returned
    /// handle is dropped). Needs a tokio runtime.
    fn host(&self) -> anyhow::Result<(HostCapabilities, Option<ExampleServices>)> {
        let mut plain = std::collections::BTreeMap::new();
        for (key, value) in &self.config {
            anyhow::ensure!(plain.insert(key.clone(), value.clone()).is_none(), "--config {key} is given twice");
        }
        let mut secrets = std::collections::BTreeMap::new();
        for (key, value) in &self.secrets {
            anyhow::ensure!(secrets.insert(key.clone(), value.clone()).is_none(), "--secret {key} is given twice");
        }
        let config = ConfigValues::from_values(plain, secrets).map_err(|e| anyhow::anyhow!("--config/--secret {e}"))?;
        let mut policy = kiln::capability::HostPolicy::default();
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::CompileComponent { out, wasm } = &cli.command {
        // No runtime, no logging: a compiler and nothing else.
        return match plugin::compiler::compile_component_file(wasm, out) {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, message)) => {
                eprintln!("error: {message}");
                ExitCode::from(u8::try_from(code).unwrap_or(1))
            }
        };
    }
    if !matches!(cli.command, Command::Serve(_)) {
        restore_default_sigpipe();
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            // notify logs every watch it could not remove (a deploy renames
            // directories away) as a warning; those are expected.
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| "info,notify=error".into()),
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
    let common = &cli.common;
    match cli.command {
        Command::Run(args) => run(common, args).await,
        Command::Serve(args) => serve(common, args).await,
        Command::Plugin(PluginCommand::Check { plugin, grants }) => check(common, &plugin, &grants),
        Command::Plugin(PluginCommand::New { name, path, sdk }) => new_plugin(&name, path, sdk),
        Command::Plugin(PluginCommand::Sign { dir, key }) => sign_plugin(&dir, &key),
        Command::Keys(KeysCommand::New { json, signing: true, out: Some(out) }) => {
            let key = kiln::tenant::PrivateKey::generate().context("cannot read random bytes for a key")?;
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("cannot create {} (an existing file is never overwritten)", out.display()))?;
            file.write_all(key.to_file_text().as_bytes()).with_context(|| format!("cannot write {}", out.display()))?;
            let public = key.public();
            if json {
                println!("{}", serde_json::json!({"public_key": public.to_string(), "file": out.display().to_string()}));
            } else {
                println!("public key: {public}
private key: {}

Trust it in kiln.toml ([tenants.NAME] signing_keys = [\"{public}\"]) and sign with
`kiln plugin sign DIR --key {}`. Keep the private key file to yourself.", out.display(), out.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::New { json, .. }) => {
            let key = kiln::tenant::new_key().context("cannot read random bytes for a key")?;
            let hash = kiln::tenant::KeyHash::of(&key);
            if json {
                println!("{}", serde_json::json!({"key": key, "hash": hash.to_string()}));
            } else {
                println!("key:  {key}\nhash: {hash}\n\nPut the hash in kiln.toml ([admin] api_keys = [\"{hash}\"]) and give the key to the client\n(KILN_API_KEY for the CLI, `Authorization: Bearer KEY` over HTTP). It is not shown again.");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(command) => {
            let client = ApiClient::new(&common.api);
            let spec = match &command {
                PluginCommand::Deploy { plugin, .. } => plugin.clone(),
                _ => String::new(),
            };
            let lookup = plugin_lookup(common, &spec)?;
            tokio::task::spawn_blocking(move || plugins(&client, &lookup.dirs, command)).await?
        }
        Command::Enqueue(args) => {
            let client = ApiClient::new(&common.api);
            tokio::task::spawn_blocking(move || enqueue(&client, args)).await?
        }
        Command::Jobs(command) => {
            let client = ApiClient::new(&common.api);
            tokio::task::spawn_blocking(move || jobs(&client, command)).await?
        }
        Command::Queues(command) => {
            let client = ApiClient::new(&common.api);
            tokio::task::spawn_blocking(move || queues(&client, command)).await?
        }
        Command::Kv(command) => {
            let client = ApiClient::new(&common.api);
            tokio::task::spawn_blocking(move || kv(&client, command)).await?
        }
        Command::CompileComponent { .. } => unreachable!("handled before the runtime starts"),
    }
}

/// A key or prefix as one path segment or query value: every byte but the
/// unreserved ones percent-encoded.
fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// A kv value for a person: the text, or its size when it is not text.
fn kv_value_text(entry: &serde_json::Value) -> String {
    match entry["value"].as_str() {
        Some(text) => text.to_string(),
        None => format!("({} bytes, not text; --json shows them as base64)", entry["bytes"]),
    }
}

fn kv(client: &ApiClient, command: KvCommand) -> anyhow::Result<ExitCode> {
    let path = |plugin: &str, key: &str, store: &KvStoreArg| {
        format!("/plugins/{}/kv/{}?store={}", url_encoded(plugin), url_encoded(key), url_encoded(&store.name))
    };
    let printed = match command {
        KvCommand::List { plugin, prefix, store, json } => {
            let mut entries = Vec::new();
            let mut offset = 0u64;
            let answer = loop {
                let page = client.get(&format!(
                    "/plugins/{}/kv?store={}&prefix={}&offset={offset}&limit=1000",
                    url_encoded(&plugin),
                    url_encoded(&store.name),
                    url_encoded(&prefix)
                ))?;
                entries.extend(page["entries"].as_array().cloned().unwrap_or_default());
                match page["next_offset"].as_u64() {
                    Some(next) if entries.len() < 100_000 => offset = next,
                    _ => break page,
                }
            };
            let all = serde_json::json!({ "plugin": plugin, "store": store.name, "entries": entries, "store_bytes": answer["store_bytes"] });
            say(json, &all, || {
                if entries.is_empty() {
                    return format!("no keys in store {} of {plugin}\n", store.name);
                }
                let mut rows = vec![vec!["KEY".to_string(), "VALUE".to_string()]];
                rows.extend(entries.iter().map(|e| vec![e["key"].as_str().unwrap_or("").to_string(), kv_value_text(e)]));
                render::table(&rows)
            })
        }
        KvCommand::Get { plugin, key, store, json } => {
            let answer = client.get(&path(&plugin, &key, &store))?;
            say(json, &answer, || format!("{}\n", kv_value_text(&answer)))
        }
        KvCommand::Set { plugin, key, value, store, json } => {
            let bytes = text_or_file(value, "VALUE")?;
            let body = match String::from_utf8(bytes) {
                Ok(text) => serde_json::json!({ "value": text }),
                Err(e) => {
                    use base64::Engine as _;
                    serde_json::json!({ "value_base64": base64::engine::general_purpose::STANDARD.encode(e.as_bytes()) })
                }
            };
            let answer = client.put(&path(&plugin, &key, &store), &body)?;
            say(json, &answer, || format!("set {key} in store {} of {plugin} ({} bytes)\n", store.name, answer["bytes"]))
        }
        KvCommand::Delete { plugin, key, store, json } => {
            let answer = client.delete(&path(&plugin, &key, &store))?;
            say(json, &answer, || match answer["deleted"].as_bool() {
                Some(true) => format!("deleted {key} from store {} of {plugin}\n", store.name),
                _ => format!("no key {key} in store {} of {plugin}: nothing deleted\n", store.name),
            })
        }
    };
    print!("{printed}");
    Ok(ExitCode::SUCCESS)
}

async fn serve(common: &CommonArgs, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.insecure = args.insecure;
    if let Some(url) = args.database_url {
        config.database_url = Some(url);
        config.validate_database("--database-url (or KILN_DATABASE_URL)")?;
    }
    let plugins_dir = common
        .plugins_dir
        .clone()
        .or_else(|| config.plugins_dir.clone());
    kiln::serve::serve(config, plugins_dir.as_deref(), kiln::serve::shutdown_signal(), |address| {
        // The one line a supervisor or a test reads to find the API.
        println!("listening on http://{address}");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// A command's output piped into `head` ends the command quietly when the
/// pipe closes, as any Unix tool does, instead of a panic on the next write.
/// (Rust ignores SIGPIPE; `kiln serve` keeps ignoring it.)
fn restore_default_sigpipe() {
    // SAFETY: called before any thread is started; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn enqueue(client: &ApiClient, args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    let mut job = serde_json::json!({ "kind": args.kind });
    if let Some(payload) = args.payload {
        let bytes = text_or_file(payload, "--payload")?;
        let value: serde_json::Value = serde_json::from_slice(&bytes).context("--payload is not JSON")?;
        job["payload"] = value;
    }
    let strings = [("queue", args.queue), ("unique_key", args.unique_key), ("concurrency_key", args.concurrency_key), ("scheduled_at", args.at)];
    for (key, value) in strings {
        if let Some(value) = value {
            job[key] = serde_json::Value::String(value);
        }
    }
    if let Some(priority) = args.priority {
        job["priority"] = priority.into();
    }
    if let Some(max_attempts) = args.max_attempts {
        job["max_attempts"] = max_attempts.into();
    }
    let answer = client.post("/jobs", Some(&job))?;
    let kind_state = format!("{}, {}", answer["kind"].as_str().unwrap_or("?"), answer["state"].as_str().unwrap_or("?"));
    let id = &answer["id"];
    print!(
        "{}",
        say(args.json, &answer, || match answer["created"].as_bool() {
            Some(false) => format!("job {id} already holds that unique key ({kind_state}); nothing new was enqueued\n"),
            _ => format!("enqueued job {id} ({kind_state}): kiln jobs show {id}\n"),
        })
    );
    Ok(ExitCode::SUCCESS)
}

fn jobs(client: &ApiClient, command: JobsCommand) -> anyhow::Result<ExitCode> {
    let answer = match command {
        JobsCommand::List { state, kind, queue, limit, before, json } => {
            let mut query = vec![format!("limit={limit}"), "order=newest".to_string()];
            for (key, value) in [("state", state), ("kind", kind), ("queue", queue), ("before", before.map(|b| b.to_string()))] {
                if let Some(value) = value {
                    query.push(format!("{key}={value}"));
                }
            }
            let page = client.get(&format!("/jobs?{}", query.join("&")))?;
            say(json, &page, || render::job_table(&page, kiln::queue::Clock::now(&SystemClock)))
        }
        JobsCommand::Show { id, json } => {
            let job = client.get(&format!("/jobs/{id}"))?;
            say(json, &job, || render::job_summary(&job))
        }
        JobsCommand::Logs { id, attempt, follow: false, json } => {
            let query = attempt.map(|n| format!("?attempt={n}")).unwrap_or_default();
            let page = client.get(&format!("/jobs/{id}/logs{query}"))?;
            say(json, &page, || render::log_lines(page["lines"].as_array().map_or(&[][..], Vec::as_slice)))
        }
        JobsCommand::Logs { id, attempt, follow: true, json } => return follow_logs(client, id, attempt, json),
        JobsCommand::Watch { id } => return watch_job(client, id),
        JobsCommand::Retry(pick) => match pick.id {
            Some(id) => {
                let job = client.post(&format!("/jobs/{id}/retry"), None)?;
                say(pick.json, &job, || render::job_action("retried", &job))
            }
            None => {
                let answer = client.post(&format!("/jobs/retry?{}", pick.dead_query()), None)?;
                say(pick.json, &answer, || render::bulk_action("retried", &answer))
            }
        },
        JobsCommand::Delete(pick) => match pick.id {
            Some(id) => {
                let job = client.delete(&format!("/jobs/{id}"))?;
                say(pick.json, &job, || render::job_action("deleted", &job))
            }
            None => {
                let answer = client.delete(&format!("/jobs?{}", pick.dead_query()))?;
                say(pick.json, &answer, || render::bulk_action("deleted", &answer))
            }
        },
        JobsCommand::Cancel { id, json } => {
            let job = client.post(&format!("/jobs/{id}/cancel"), None)?;
            let done = if job["state"] == "running" { "asked to stop" } else { "cancelled" };
            say(json, &job, || render::job_action(done, &job))
        }
    };
    print!("{answer}");
    Ok(ExitCode::SUCCESS)
}

/// How often `jobs logs --follow` and `jobs watch` look again.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// `kiln jobs logs ID --follow`: prints lines as the job's attempts end
/// (an attempt's lines are stored when it ends), until the job is done.
fn follow_logs(client: &ApiClient, id: i64, attempt: Option<u32>, json: JsonOutput) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let query = attempt.map(|n| format!("?attempt={n}")).unwrap_or_default();
    let mut printed = 0usize;
    loop {
        // Read the state first: lines stored before a final state is read are all there.
        let done = client.get(&format!("/jobs/{id}"))?["state"].as_str().is_some_and(|s| ["completed", "cancelled", "dead"].contains(&s));
        let page = client.get(&format!("/jobs/{id}/logs{query}"))?;
        let lines = page["lines"].as_array().map_or(&[][..], Vec::as_slice);
        let fresh = lines.get(printed..).unwrap_or_default();
        let mut out = std::io::stdout().lock();
        match json.on {
            true => fresh.iter().try_for_each(|line| writeln!(out, "{line}"))?,
            false => write!(out, "{}", render::log_lines(fresh))?,
        }
        out.flush()?;
        printed = printed.max(lines.len());
        if done {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

/// `kiln jobs watch ID`.
fn watch_job(client: &ApiClient, id: i64) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal as _;
    let bar = indicatif::ProgressBar::new(100);
    let on_terminal = std::io::stderr().is_terminal();
    if on_terminal {
        bar.set_style(indicatif::ProgressStyle::with_template("job {prefix} [{bar:40}] {pos:>3}% {msg}").expect("a valid template").progress_chars("=> "));
        bar.set_prefix(id.to_string());
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut last = String::new();
    loop {
        let job = client.get(&format!("/jobs/{id}"))?;
        let (state, percent, line) = render::watch_line(&job);
        bar.set_position(u64::from(percent));
        bar.set_message(line.clone());
        if !on_terminal && line != last {
            eprintln!("job {id}: {line}");
        }
        last = line;
        match state.as_str() {
            "completed" => {
                bar.finish();
                return Ok(ExitCode::SUCCESS);
            }
            "dead" | "cancelled" => {
                bar.abandon();
                return Ok(ExitCode::FAILURE);
            }
            _ => std::thread::sleep(FOLLOW_EVERY),
        }
    }
}

/// The API's JSON for scripts, or the text `human` makes of it for people.
fn say(json: JsonOutput, answer: &serde_json::Value, human: impl FnOnce() -> String) -> String {
    if json.on { format!("{}\n", serde_json::to_string_pretty(answer).expect("JSON prints")) } else { human() }
}

fn queues(client: &ApiClient, command: QueuesCommand) -> anyhow::Result<ExitCode> {
    let answer = match command {
        QueuesCommand::List { json } => {
            let answer = client.get("/queues")?;
            say(json, &answer, || render::queue_table(&answer))
        }
        QueuesCommand::Pause { name, json } => {
            let answer = client.post(&format!("/queues/{name}/pause"), None)?;
            say(json, &answer, || format!("queue {name} paused: no job of it starts until `kiln queues resume {name}`\n"))
        }
        QueuesCommand::Resume { name, json } => {
            let answer = client.post(&format!("/queues/{name}/resume"), None)?;
            say(json, &answer, || format!("queue {name} resumed\n"))
        }
    };
    print!("{answer}");
    Ok(ExitCode::SUCCESS)
}

/// `kiln plugin sign DIR --key FILE`: writes DIR/plugin.sig over the
/// directory's component and manifest as they are now.
fn sign_plugin(dir: &std::path::Path, key: &std::path::Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(key).with_context(|| format!("cannot read the signing key {}", key.display()))?;
    let key = kiln::tenant::PrivateKey::from_file_text(&text, &key.display().to_string()).map_err(anyhow::Error::msg)?;
    let manifest_path = dir.join(plugin::MANIFEST_FILE);
    let manifest = std::fs::read_to_string(&manifest_path).with_context(|| format!("cannot read {}", manifest_path.display()))?;
    let files = plugin::resolve(&dir.display().to_string(), &[])?;
    let wasm = std::fs::read(&files.wasm).with_context(|| format!("cannot read {}", files.wasm.display()))?;
    let out = dir.join(kiln::tenant::SIGNATURE_FILE);
    std::fs::write(&out, key.sign(&plugin::sha256_hex(&wasm), &manifest)).with_context(|| format!("cannot write {}", out.display()))?;
    println!("signed {} and {} with {}: wrote {}", files.wasm.display(), manifest_path.display(), key.public(), out.display());
    Ok(ExitCode::SUCCESS)
}

fn plugins(client: &ApiClient, dirs: &[PathBuf], command: PluginCommand) -> anyhow::Result<ExitCode> {
    let answer = match command {
        PluginCommand::List { json } => {
            let answer = client.get("/plugins")?;
            say(json, &answer, || render::plugin_table(&answer))
        }
        PluginCommand::Deploy { plugin, name, json } => {
            let files = plugin::resolve(&plugin, dirs)?;
            let manifest_path = files
                .manifest
                .as_ref()
                .with_context(|| format!("{} has no {} beside it; a deployed plugin needs one", files.wasm.display(), plugin::MANIFEST_FILE))?;
            let manifest = std::fs::read_to_string(manifest_path).with_context(|| format!("cannot read {}", manifest_path.display()))?;
            let name = match name {
                Some(name) => name,
                None => plugin::Manifest::parse(&manifest, &manifest_path.display().to_string())?.name,
            };
            let wasm = std::fs::read(&files.wasm).with_context(|| format!("cannot read {}", files.wasm.display()))?;
            let sig_path = manifest_path.with_file_name(kiln::tenant::SIGNATURE_FILE);
            let signature = match sig_path.is_file() {
                true => Some(std::fs::read_to_string(&sig_path).with_context(|| format!("cannot read {}", sig_path.display()))?),
                false => None,
            };
            use base64::Engine as _;
            let body = serde_json::to_value(kiln::api::DeployRequest {
                manifest,
                wasm_base64: base64::engine::general_purpose::STANDARD.encode(wasm),
                signature,
            })?;
            let answer = client.put(&format!("/plugins/{name}"), &body)?;
            say(json, &answer, || render::deployed("deployed", &answer))
        }
        PluginCommand::Rollback { name, json } => {
            let answer = client.post(&format!("/plugins/{name}/rollback"), None)?;
            say(json, &answer, || render::deployed("rolled back", &answer))
        }
        PluginCommand::Remove { name, force, json } => {
            let answer = client.delete(&format!("/plugins/{name}?force={force}"))?;
            say(json, &answer, || format!("removed {name} {}; its versions stay archived\n", answer["version"].as_str().unwrap_or("?")))
        }
        PluginCommand::Check { .. } | PluginCommand::New { .. } | PluginCommand::Sign { .. } => unreachable!("handled without the API"),
    };
    print!("{answer}");
    Ok(ExitCode::SUCCESS)
}

fn new_plugin(name: &str, path: Option<PathBuf>, sdk: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let dir = path.unwrap_or_else(|| PathBuf::from(name));
    let sdk = sdk.unwrap_or_else(plugin::scaffold::default_sdk_path);
    let files = plugin::scaffold::scaffold(name, &dir, &sdk)?;
    for file in &files {
        println!("created {}", file.display());
    }
    // Commands that work when followed literally, one after another.
    println!("\nnext, build and run it:");
    println!("  cd {}", dir.display());
    println!("  {}", plugin::scaffold::BUILD_COMMAND);
    println!("  kiln run . --payload '{{\"name\": \"Ada\"}}'");
    Ok(ExitCode::SUCCESS)
}

/// Where a plugin given by name is looked up: `--plugins-dir`, then the
/// examples built into this binary (written out to a temporary directory
/// only when `spec` names one), then, in a source checkout, the plugins
/// built beside the binary (what a plugin's source directory without a
/// build of its own resolves to).
struct PluginLookup {
    dirs: Vec<PathBuf>,
    _examples: Option<plugin::seed::ExamplesOnDisk>,
}

fn plugin_lookup(common: &CommonArgs, spec: &str) -> anyhow::Result<PluginLookup> {
    let mut dirs = Vec::new();
    dirs.extend(common.plugins_dir.clone());
    let in_given_dir = dirs.iter().any(|d| d.join(spec).is_dir());
    let examples = if !in_given_dir && plugin::seed::examples().iter().any(|e| e.name == spec) && !std::path::Path::new(spec).exists() {
        let written = plugin::seed::ExamplesOnDisk::write().context("cannot write the built-in examples to a temporary directory")?;
        dirs.push(written.path().to_path_buf());
        Some(written)
    } else {
        None
    };
    dirs.extend([plugin::built::EXAMPLES_DIR, plugin::built::TESTING_DIR].map(PathBuf::from).into_iter().filter(|d| d.is_dir()));
    Ok(PluginLookup { dirs, _examples: examples })
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

/// Loads a plugin as a host with the default `kiln.toml` and what `host`
/// allows would: the same ceilings and compile budget, compiled in a
/// child process.
fn load(common: &CommonArgs, sandbox: &Sandbox, spec: &str, host: HostCapabilities) -> anyhow::Result<Plugin> {
    let lookup = plugin_lookup(common, spec)?;
    let files = plugin::resolve(spec, &lookup.dirs)?;
    let compiler = Compiler::child_process(CompileBudget::default()).context("cannot find the kiln executable to compile with")?;
    let policy = LoadPolicy { compiler: Arc::new(compiler), capabilities: Arc::new(host), ..LoadPolicy::default() };
    let plugin = plugin::load_with(sandbox, artifact_cache(common).as_ref(), &files, &policy)?;
    plugin.keep_artifact();
    Ok(plugin)
}

fn check(common: &CommonArgs, spec: &str, grants: &GrantArgs) -> anyhow::Result<ExitCode> {
    let sandbox = Sandbox::with_pool(PoolSize::for_one_run())?;
    let (host, _services) = grants.host()?;
    let plugin = load(common, &sandbox, spec, host.clone())?;
    let m = &plugin.manifest;
    println!("ok: {} {} implements {}", m.name, m.version, kiln::sandbox::WORLD);
    println!("  component: {} (sha256 {})", plugin.wasm_path.display(), plugin.wasm_sha256);
    println!(
        "  limits: fuel {}, memory {} MiB, timeout {} ms, output {} bytes; retry: {} attempts",
        m.limits.fuel, m.limits.memory_mib, m.limits.timeout_ms, m.limits.output_bytes, m.retry.max_attempts
    );
    println!("  trigger: {}", m.trigger.describe());
    println!("  imports: {}", plugin.component.imports().join(", "));
    print!("{}", capability_lines(plugin.component.grants(), &host));
    Ok(ExitCode::SUCCESS)
}

/// What a plugin asks for of each capability and what it is granted, one line each.
fn capability_lines(grants: &Grants, host: &HostCapabilities) -> String {
    let asked = &grants.asked;
    if asked.is_empty() {
        return "  capabilities: none asked\n".to_string();
    }
    let list = |items: Vec<String>| if items.is_empty() { "nothing".to_string() } else { items.join(", ") };
    let names = |items: &[String]| items.to_vec();
    let origins = |items: &[kiln::capability::HttpOrigin]| items.iter().map(ToString::to_string).collect::<Vec<_>>();
    let mut config_granted: Vec<String> =
        grants.config_keys.iter().map(|k| if host.config.is_secret(k) { format!("{k} (secret)") } else { k.clone() }).collect();
    if !grants.config_missing.is_empty() {
        config_granted.push(format!("no value here for {}", grants.config_missing.join(", ")));
    }
    let mut out = "  capabilities:\n".to_string();
    for (key, asked, granted) in [
        ("http", origins(&asked.http), origins(&grants.http)),
        ("kv", names(&asked.kv), names(&grants.kv)),
        ("config", names(&asked.config), config_granted),
        ("enqueue", names(&asked.enqueue), names(&grants.enqueue)),
    ] {
        if !asked.is_empty() {
            out.push_str(&format!("    {key:<8} asks {}; granted {}\n", list(asked), list(granted)));
        }
    }
    out
}

async fn run(common: &CommonArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
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
    sandbox.set_kv_backend(Arc::new(kiln::worker::StoreKv::new(kv_store.clone())));
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
    let writes = kiln::worker::effects::kv_writes(&plugin.manifest.name, report.kv_writes.clone());
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
fn child_json(child: &kiln::capability::ChildJob) -> serde_json::Value {
    let (delay_ms, scheduled_at) = match child.due {
        Some(kiln::capability::Due::After(d)) => (Some(d.as_millis() as u64), None),
        Some(kiln::capability::Due::At(at)) => (None, Some(kiln::queue::to_rfc3339(at))),
        None => (None, None),
    };
    serde_json::json!({
        "kind": child.kind,
        "payload": output_value(&child.payload),
        "queue": child.queue.as_deref().unwrap_or(kiln::queue::DEFAULT_QUEUE),
        "priority": child.priority.unwrap_or(0),
        "delay_ms": delay_ms,
        "scheduled_at": scheduled_at,
        "unique_key": child.unique_key,
    })
}

/// A kv write of the run, as `kiln run --json` reports it.
fn kv_write_json(write: &kiln::capability::KvEffect) -> serde_json::Value {
    use kiln::capability::kv::KvChange;
    let (op, bytes, by) = match &write.change {
        KvChange::Set(value) => ("set", Some(value.len()), None),
        KvChange::Delete => ("delete", None, None),
        KvChange::Add(delta) => ("add", None, Some(*delta)),
    };
    serde_json::json!({ "store": write.store, "key": write.key, "op": op, "bytes": bytes, "by": by })
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
