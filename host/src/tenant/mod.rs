//! Who calls the API and what they may do: the operator's and tenants'
//! API keys (kept as hashes), and each tenant's settings as kiln.toml
//! gives them. Knows nothing of workers, queues or wasm (how a kind names its
//! tenant is `crate::names`'); the API asks it who a request's key
//! belongs to.

mod caller;
pub mod keys;
pub mod settings;
pub mod signing;

pub use caller::{Caller, KeyRing};
pub use keys::{KeyHash, new_key};
pub use settings::{AdminSettings, Rate, TenantSettings};
pub use signing::{PrivateKey, PublicKey, SIGNATURE_FILE, SignaturePolicy};
