//! Time as the store and the worker see it: injected, so tests move it
//! instead of sleeping.

use super::job::Millis;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Millis;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970");
        i64::try_from(since_epoch.as_millis()).expect("fits until the year 292 million")
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(start: Millis) -> Self {
        Self { now: Arc::new(AtomicI64::new(start)) }
    }

    pub fn advance(&self, ms: i64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }
}

/// Formats a time as RFC 3339 (UTC, milliseconds).
pub fn to_rfc3339(ms: Millis) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Parses an RFC 3339 time.
pub fn from_rfc3339(text: &str) -> Result<Millis, String> {
    let t = humantime::parse_rfc3339_weak(text).map_err(|e| format!("{text:?} is not an RFC 3339 time: {e}"))?;
    let since = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| format!("{text:?} is before 1970"))?;
    i64::try_from(since.as_millis()).map_err(|_| format!("{text:?} is too far in the future"))
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;
