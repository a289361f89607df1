//! What every command shares: the global flags (the plugins directory,
//! the artifact cache, the API's address) and the exit codes.

use crate::client::DEFAULT_API;
use clap::Args;
use std::path::PathBuf;

/// Exit code for a run whose outcome was not `ok`.
pub(crate) const EXIT_NOT_OK: u8 = 1;

/// Exit code for bad input: an unloadable plugin, a bad payload, bad flags.
pub(crate) const EXIT_BAD_INPUT: u8 = 2;

#[derive(Args, Debug)]
pub(crate) struct CommonArgs {
    /// One directory per plugin. `kiln serve` serves (and deploys into) it
    /// [default: DATA_DIR/plugins, made with the built-in examples the
    /// first time]; `kiln run NAME` looks NAME up in it before the examples.
    #[arg(long, global = true, env = "KILN_PLUGINS_DIR")]
    pub(crate) plugins_dir: Option<PathBuf>,
    /// Where compiled plugins are cached [default: $XDG_CACHE_HOME/kiln or ~/.cache/kiln].
    #[arg(long, global = true, env = "KILN_CACHE_DIR")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Compile plugins every time instead of using the artifact cache.
    #[arg(long, global = true)]
    pub(crate) no_cache: bool,
    /// The Kiln API that `enqueue`, `jobs`, `queues` and `plugin list|deploy|rollback|remove` talk to.
    #[arg(long, global = true, env = "KILN_API", default_value = DEFAULT_API)]
    pub(crate) api: String,
}
