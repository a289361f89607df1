//! The `kiln` command line: its arguments (clap), and each command, one
//! file per group: `run` (one iteration here, `kiln run`), `serve`
//! (the host), `plugins` (new, check, sign, and deploy through the API),
//! `jobs` (enqueue, list, show, follow, act), `queues`, `kv`,
//! `keys` (API and signing keys); `local` finds and loads a plugin on
//! this machine; `output` is what the printing commands share. The
//! remote commands talk to the API through [`crate::client`].

mod common;
mod jobs;
mod keys;
mod kv;
mod local;
mod output;
mod plugins;
mod queues;
mod run;
mod serve;

use self::common::{CommonArgs, EXIT_BAD_INPUT};
use self::jobs::{EnqueueArgs, JobsCommand, enqueue, jobs};
use self::keys::{KeysCommand, new_key};
use self::kv::{KvCommand, kv};
use self::local::plugin_lookup;
use self::plugins::{PluginCommand, check, new_plugin, plugins, sign_plugin};
use self::queues::{QueuesCommand, queues};
use self::run::{RunArgs, run};
use self::serve::{ServeArgs, serve};
use crate::client::ApiClient;
use crate::plugin;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "kiln", version, about = "Background jobs as sandboxed WebAssembly components")]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}


#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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

/// The whole `kiln` command: parses the arguments, runs the command,
/// says what went wrong on stderr, and answers the exit code.
pub fn main() -> ExitCode {
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
pub(crate) fn error_chain(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

pub(crate) async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let common = &cli.common;
    match cli.command {
        Command::Run(args) => run(common, args).await,
        Command::Serve(args) => serve(common, args).await,
        Command::Plugin(PluginCommand::Check { plugin, grants }) => check(common, &plugin, &grants),
        Command::Plugin(PluginCommand::New { name, path, sdk }) => new_plugin(&name, path, sdk),
        Command::Plugin(PluginCommand::Sign { dir, key }) => sign_plugin(&dir, &key),
        Command::Keys(KeysCommand::New { json, signing, out }) => new_key(json, signing, out),
        Command::Plugin(command) => {
            let client = ApiClient::new(&common.api);
            let spec = match &command {
                PluginCommand::Deploy { plugin, .. } => plugin.clone(),
                _ => String::new(),
            };
            let lookup = plugin_lookup(common, &spec)?;
            tokio::task::spawn_blocking(move || plugins(&client, &lookup.dirs, command)).await?
        }
        Command::Enqueue(args) => remote(common, move |client| enqueue(client, args)).await,
        Command::Jobs(command) => remote(common, move |client| jobs(client, command)).await,
        Command::Queues(command) => remote(common, move |client| queues(client, command)).await,
        Command::Kv(command) => remote(common, move |client| kv(client, command)).await,
        Command::CompileComponent { .. } => unreachable!("handled before the runtime starts"),
    }
}

/// Runs a command that talks to the API (`--api`) on a blocking thread:
/// the client is ureq's, which blocks.
async fn remote(common: &CommonArgs, command: impl FnOnce(&ApiClient) -> anyhow::Result<ExitCode> + Send + 'static) -> anyhow::Result<ExitCode> {
    let client = ApiClient::new(&common.api);
    tokio::task::spawn_blocking(move || command(&client)).await?
}

/// A command's output piped into `head` ends the command quietly when the
/// pipe closes, as any Unix tool does, instead of a panic on the next write.
/// (Rust ignores SIGPIPE; `kiln serve` keeps ignoring it.)
pub(crate) fn restore_default_sigpipe() {
    // SAFETY: called before any thread is started; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
