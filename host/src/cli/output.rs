//! What the printing commands share: `--json`, and the line a person reads
//! otherwise.

use clap::Args;

/// `--json`, on every command that talks to the API.
#[derive(Args, Debug, Clone, Copy)]
pub(crate) struct JsonOutput {
    /// Print the API's JSON answer instead of the text for people (for scripts).
    #[arg(long = "json")]
    pub(crate) on: bool,
}

/// The API's JSON for scripts, or the text `human` makes of it for people.
pub(crate) fn say(json: JsonOutput, answer: &serde_json::Value, human: impl FnOnce() -> String) -> String {
    if json.on { format!("{}\n", serde_json::to_string_pretty(answer).expect("JSON prints")) } else { human() }
}
