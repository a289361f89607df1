//! `kiln kv`: list, read, set and delete a plugin's kv keys through the API.

use super::output::{JsonOutput, say};
use super::run::text_or_file;
use crate::client::{ApiClient, render};
use clap::{Args, Subcommand};
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub(crate) enum KvCommand {
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
        #[command(flatten)]
        at: KeyArgs,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Set a key (the value as text, or @FILE).
    Set {
        #[command(flatten)]
        at: KeyArgs,
        value: String,
        #[command(flatten)]
        json: JsonOutput,
    },
    /// Delete a key.
    Delete {
        #[command(flatten)]
        at: KeyArgs,
        #[command(flatten)]
        json: JsonOutput,
    },
}

/// One key of one of a plugin's stores.
#[derive(Args, Debug)]
pub(crate) struct KeyArgs {
    pub(crate) plugin: String,
    pub(crate) key: String,
    #[command(flatten)]
    pub(crate) store: KvStoreArg,
}

/// Which of the plugin's stores.
#[derive(Args, Debug)]
pub(crate) struct KvStoreArg {
    /// The store [default: default].
    #[arg(long = "store", default_value = "default")]
    pub(crate) name: String,
}

/// A key or prefix as one path segment or query value: every byte but the
/// unreserved ones percent-encoded.
pub(crate) fn url_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// A kv value for a person: the text, or its size when it is not text.
pub(crate) fn kv_value_text(entry: &serde_json::Value) -> String {
    match entry["value"].as_str() {
        Some(text) => text.to_string(),
        None => format!("({} bytes, not text; --json shows them as base64)", entry["bytes"]),
    }
}

pub(crate) fn kv(client: &ApiClient, command: KvCommand) -> anyhow::Result<ExitCode> {
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
        KvCommand::Get { at: KeyArgs { plugin, key, store }, json } => {
            let answer = client.get(&path(&plugin, &key, &store))?;
            say(json, &answer, || format!("{}\n", kv_value_text(&answer)))
        }
        KvCommand::Set { at: KeyArgs { plugin, key, store }, value, json } => {
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
        KvCommand::Delete { at: KeyArgs { plugin, key, store }, json } => {
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
