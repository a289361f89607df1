//! `kiln serve`: the host, with the config file, data directory and listen
//! address from the flags.

use super::common::CommonArgs;
use crate::config::Config;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// The config file [default: ./kiln.toml if it exists].
    #[arg(long, env = "KILN_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Address of the HTTP API (overrides `listen`).
    #[arg(long, env = "KILN_LISTEN")]
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// Directory of the database and the artifact cache (overrides `data_dir`).
    #[arg(long, env = "KILN_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Keep jobs in this Postgres database, `postgres://...` (overrides
    /// `database_url`; unset: the embedded SQLite file).
    #[arg(long, env = "KILN_DATABASE_URL")]
    pub(crate) database_url: Option<String>,
    /// Listen beyond loopback although no API keys are configured.
    #[arg(long)]
    pub(crate) insecure: bool,
}

pub(crate) async fn serve(common: &CommonArgs, args: ServeArgs) -> anyhow::Result<ExitCode> {
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
    crate::serve::serve(config, plugins_dir.as_deref(), crate::serve::shutdown_signal(), |address| {
        // The one line a supervisor or a test reads to find the API.
        println!("listening on http://{address}");
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}
