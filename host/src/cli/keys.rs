//! `kiln keys new`: a fresh API key and its hash, or an ed25519 signing key.

use anyhow::Context as _;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand, Debug)]
pub(crate) enum KeysCommand {
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

/// `kiln keys new`: with `signing`, a fresh ed25519 signing key written to
/// `out` (mode 0600, never over an existing file) and its public key
/// printed; otherwise a fresh API key and its hash, printed once.
pub(crate) fn new_key(json: bool, signing: bool, out: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    match (signing, out) {
        (true, Some(out)) => {
            let key = crate::tenant::PrivateKey::generate().context("cannot read random bytes for a key")?;
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
        }
        _ => {
            let key = crate::tenant::new_key().context("cannot read random bytes for a key")?;
            let hash = crate::tenant::KeyHash::of(&key);
            if json {
                println!("{}", serde_json::json!({"key": key, "hash": hash.to_string()}));
            } else {
                println!("key:  {key}\nhash: {hash}\n\nPut the hash in kiln.toml ([admin] api_keys = [\"{hash}\"]) and give the key to the client\n(KILN_API_KEY for the CLI, `Authorization: Bearer KEY` over HTTP). It is not shown again.");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
