//! The limits one iteration runs under, and their defaults.

use std::time::Duration;

/// Default CPU budget: about 2–10 s of wasm on this class of machine (one unit
/// of fuel is roughly one wasm instruction); enough for real work, small
/// enough that a runaway loop is stopped.
pub const DEFAULT_FUEL: u64 = 10_000_000_000;
/// Default memory budget across all of an instance's memories and tables.
pub const DEFAULT_MEMORY_BYTES: u64 = 64 << 20;
/// Default wall-clock budget of one iteration.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Payloads travel through the queue and into guest memory: 1 MiB keeps a
/// single job from crowding either.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// A result is stored with its job; the same reasoning as payloads.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 1 << 20;
/// How long a cancelled iteration may take to return on its own before the
/// host interrupts it.
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(5);
/// The most memory any plugin may be granted: the pooling allocator reserves
/// slots of this size, so it also bounds the host's address-space use.
pub const MAX_MEMORY_BYTES: u64 = 1 << 30;

/// What one iteration may use. Every field is enforced by the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// Fuel units (≈ wasm instructions) before the iteration is stopped.
    pub fuel: u64,
    /// Bytes of linear memory plus table storage, summed over the instance.
    pub memory_bytes: u64,
    /// Wall-clock time from the start of the iteration.
    pub timeout: Duration,
    /// Largest payload handed to the plugin.
    pub max_payload_bytes: usize,
    /// Largest `ok` value accepted back.
    pub max_output_bytes: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            fuel: DEFAULT_FUEL,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            timeout: DEFAULT_TIMEOUT,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// A payload larger than the budget allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload is {size} bytes, over the limit of {limit} bytes")]
pub struct PayloadTooLarge {
    pub size: usize,
    pub limit: usize,
}

impl Budget {
    /// Refuses a payload over `max_payload_bytes` before anything runs.
    pub fn check_payload(&self, payload: &[u8]) -> Result<(), PayloadTooLarge> {
        if payload.len() > self.max_payload_bytes {
            return Err(PayloadTooLarge { size: payload.len(), limit: self.max_payload_bytes });
        }
        Ok(())
    }
}
