//! API keys and their hashes. A key is a bearer secret a client sends
//! (`Authorization: Bearer KEY`); a host keeps only its hash
//! (`sha256:` and 64 hex digits of the key's SHA-256), so a leaked
//! kiln.toml grants nothing. `kiln keys new` makes a key and prints both.

use sha2::{Digest, Sha256};
use std::fmt;

/// The longest key a host reads from a request; a longer one is wrong.
pub const MAX_KEY_BYTES: usize = 256;
/// What a hash starts with.
const PREFIX: &str = "sha256:";

/// A key's hash as kiln.toml holds it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// The hash of `key`.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Whether `key` hashes to this, in time that does not depend on
    /// where the two first differ.
    pub fn admits(&self, key: &str) -> bool {
        key.len() <= MAX_KEY_BYTES && self.matches(&KeyHash::of(key))
    }

    /// Whether two hashes are equal, in constant time.
    pub fn matches(&self, other: &KeyHash) -> bool {
        use subtle::ConstantTimeEq as _;
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(PREFIX)?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({self})")
    }
}

impl std::str::FromStr for KeyHash {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let problem = || format!("{text:?} is not a key hash: `sha256:` and 64 hex digits (`kiln keys new` prints a key and its hash)");
        let hex = text.strip_prefix(PREFIX).ok_or_else(problem)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(problem());
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| problem())?;
        }
        Ok(Self(bytes))
    }
}

impl<'de> serde::Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A fresh key: `kiln_` and 43 characters of base64url over 32 bytes from
/// the kernel's random source.
pub fn new_key() -> std::io::Result<String> {
    use base64::Engine as _;
    Ok(format!("kiln_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes()?)))
}

/// 32 bytes from the system's random source.
pub fn random_bytes() -> std::io::Result<[u8; 32]> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_is_the_sha256_of_the_key_and_reads_back_as_written() {
        let hash = KeyHash::of("test");
        assert_eq!(hash.to_string(), "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
        assert_eq!(hash.to_string().parse::<KeyHash>().unwrap(), hash);
        assert_eq!("sha256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08".parse::<KeyHash>().unwrap(), hash);
        assert!(hash.admits("test") && !hash.admits("test ") && !hash.admits(""));
        assert!(!KeyHash::of(&"k".repeat(MAX_KEY_BYTES + 1)).admits(&"k".repeat(MAX_KEY_BYTES + 1)), "an over-long key is wrong");
    }

    #[test]
    fn a_malformed_hash_is_refused_saying_what_one_looks_like() {
        for bad in ["9f86d0", "sha256:9f86", "md5:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", &format!("sha256:{}", "g".repeat(64))] {
            let e = bad.parse::<KeyHash>().unwrap_err();
            assert!(e.contains("is not a key hash: `sha256:` and 64 hex digits"), "{e}");
        }
    }

    #[test]
    fn new_keys_are_distinct_and_admitted_by_their_hash() {
        let (a, b) = (new_key().unwrap(), new_key().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("kiln_") && a.len() == 5 + 43, "{a}");
        assert!(KeyHash::of(&a).admits(&a) && !KeyHash::of(&a).admits(&b));
    }
}
