//! Signed plugins: ed25519 keys as kiln.toml and key files write them, the
//! `plugin.sig` a signer writes beside a plugin, and the check that it
//! covers exactly this component and this manifest and comes from a key
//! the tenant trusts.
//!
//! What is signed is a short text naming the component's SHA-256 and the
//! manifest's, so changing a byte of either breaks the signature:
//! `kiln plugin signature v1\ncomponent sha256 HEX\nmanifest sha256 HEX\n`.

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use std::fmt;

/// The file beside `plugin.toml` that holds a plugin's signature.
pub const SIGNATURE_FILE: &str = "plugin.sig";
/// The largest signature file a host reads.
pub const MAX_SIGNATURE_BYTES: usize = 4096;
const PUBLIC_PREFIX: &str = "ed25519:";
const PRIVATE_PREFIX: &str = "kiln-ed25519-private:";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A public key as kiln.toml names it: `ed25519:` and its 32 bytes in base64.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", B64.encode(self.0.to_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let problem = || format!("{text:?} is not a signing key: `ed25519:` and 32 bytes in base64 (`kiln keys new --signing` prints one)");
        let b64 = text.strip_prefix(PUBLIC_PREFIX).ok_or_else(problem)?;
        let bytes: [u8; 32] = B64.decode(b64).ok().and_then(|b| b.try_into().ok()).ok_or_else(problem)?;
        VerifyingKey::from_bytes(&bytes).map(Self).map_err(|_| problem())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A private key, as `kiln keys new --signing` writes it to its file.
pub struct PrivateKey(SigningKey);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public())
    }
}

impl PrivateKey {
    /// A fresh key from the system's random source.
    pub fn generate() -> std::io::Result<Self> {
        Ok(Self(SigningKey::from_bytes(&super::keys::random_bytes()?)))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The key file's text.
    pub fn to_file_text(&self) -> String {
        format!("{PRIVATE_PREFIX}{}\n", B64.encode(self.0.to_bytes()))
    }

    /// Reads a key file's text (`origin` names the file in the error).
    pub fn from_file_text(text: &str, origin: &str) -> Result<Self, String> {
        let problem = || format!("{origin} is not a Kiln signing key file (one line: `{PRIVATE_PREFIX}` and 32 bytes in base64)");
        let b64 = text.trim().strip_prefix(PRIVATE_PREFIX).ok_or_else(problem)?;
        let bytes: [u8; 32] = B64.decode(b64).ok().and_then(|b| b.try_into().ok()).ok_or_else(problem)?;
        Ok(Self(SigningKey::from_bytes(&bytes)))
    }

    /// The `plugin.sig` text for a component (by its SHA-256) and manifest.
    pub fn sign(&self, wasm_sha256: &str, manifest: &str) -> String {
        let signature = self.0.sign(&signed_text(wasm_sha256, manifest));
        format!("key = \"{}\"\nsignature = \"{}\"\n", self.public(), B64.encode(signature.to_bytes()))
    }
}

fn signed_text(wasm_sha256: &str, manifest: &str) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let manifest_sha256: String = Sha256::digest(manifest.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    format!("kiln plugin signature v1\ncomponent sha256 {wasm_sha256}\nmanifest sha256 {manifest_sha256}\n").into_bytes()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    key: PublicKey,
    signature: String,
}

/// What a tenant asks of its plugins' signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignaturePolicy {
    pub tenant: String,
    pub required: bool,
    pub trusted: Vec<PublicKey>,
}

impl SignaturePolicy {
    /// Checks a plugin's signature file (`None`: it has none) against its
    /// component's SHA-256 and its manifest. `Ok(Some(key))`: signed by
    /// that trusted key; `Ok(None)`: unsigned, and allowed to be. A
    /// signature that is there must be good, whether or not one is required.
    pub fn check(&self, signature: Option<&str>, wasm_sha256: &str, manifest: &str) -> Result<Option<String>, String> {
        let tenant = &self.tenant;
        let Some(text) = signature else {
            return match self.required {
                true => Err(format!(
                    "the plugin is not signed, and tenant {tenant:?} requires signatures (`tenants.{tenant}.require_signature`): \
                     sign it with `kiln plugin sign DIR --key FILE`, which writes {SIGNATURE_FILE}"
                )),
                false => Ok(None),
            };
        };
        if text.len() > MAX_SIGNATURE_BYTES {
            return Err(format!("{SIGNATURE_FILE} is {} bytes, over the most of {MAX_SIGNATURE_BYTES}", text.len()));
        }
        let file: SignatureFile =
            toml::from_str(text).map_err(|e| format!("{SIGNATURE_FILE} is not a signature file (`key` and `signature`): {}", e.message()))?;
        if !self.trusted.contains(&file.key) {
            return Err(format!("the plugin is signed by {}, a key `tenants.{tenant}.signing_keys` does not list", file.key));
        }
        let bytes: [u8; 64] = B64
            .decode(file.signature.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("{SIGNATURE_FILE}: `signature` is not 64 bytes in base64"))?;
        file.key.0.verify_strict(&signed_text(wasm_sha256, manifest), &Signature::from_bytes(&bytes)).map_err(|_| {
            format!("the signature by {} does not match: the component or the manifest changed after it was signed", file.key)
        })?;
        Ok(Some(file.key.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_the_component_and_the_manifest_and_names_its_trusted_key() {
        let key = PrivateKey::generate().unwrap();
        let other = PrivateKey::generate().unwrap();
        let policy = SignaturePolicy { tenant: "acme".into(), required: true, trusted: vec![key.public()] };
        let (wasm, manifest) = ("ab".repeat(32), "name = \"echo\"\nversion = \"1\"\n");
        let sig = key.sign(&wasm, manifest);
        assert_eq!(policy.check(Some(&sig), &wasm, manifest), Ok(Some(key.public().to_string())));
        let says = |result: Result<Option<String>, String>| result.unwrap_err();
        assert!(says(policy.check(None, &wasm, manifest)).contains("`tenants.acme.require_signature`"));
        assert!(says(policy.check(Some(&sig), &"cd".repeat(32), manifest)).contains("does not match"), "a changed component");
        assert!(says(policy.check(Some(&sig), &wasm, "name = \"echo\"\nversion = \"2\"\n")).contains("does not match"), "a changed manifest");
        assert!(says(policy.check(Some(&other.sign(&wasm, manifest)), &wasm, manifest)).contains("`tenants.acme.signing_keys` does not list"));
        assert!(says(policy.check(Some("junk"), &wasm, manifest)).contains("is not a signature file"));
        let optional = SignaturePolicy { required: false, ..policy.clone() };
        assert_eq!(optional.check(None, &wasm, manifest), Ok(None));
        assert!(optional.check(Some(&other.sign(&wasm, manifest)), &wasm, manifest).is_err(), "a signature that is there must be good");
    }

    #[test]
    fn keys_round_trip_through_their_text_and_bad_ones_say_what_a_key_looks_like() {
        let key = PrivateKey::generate().unwrap();
        let again = PrivateKey::from_file_text(&key.to_file_text(), "k").unwrap();
        assert_eq!(again.public(), key.public());
        let public: PublicKey = key.public().to_string().parse().unwrap();
        assert_eq!(public, key.public());
        for bad in ["ed25519:", "ed25519:AAAA", "rsa:abc", &format!("{}x", key.public())] {
            assert!(bad.parse::<PublicKey>().unwrap_err().contains("is not a signing key"), "{bad}");
        }
        assert!(PrivateKey::from_file_text("nope", "key.txt").unwrap_err().contains("key.txt is not a Kiln signing key file"));
    }
}
