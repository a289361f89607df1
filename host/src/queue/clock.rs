//! Time as the store and the worker see it: injected, so tests move it
//! instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Milliseconds since the Unix epoch: the store's one notion of time.
pub type Millis = i64;

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

/// The last instant RFC 3339 can write (9999-12-31T23:59:59.999Z): no
/// time the host computes goes past it.
pub const MAX_MILLIS: Millis = 253_402_300_799_999;

/// `now` plus `delay`, saturating at [`MAX_MILLIS`]: times computed from
/// what a plugin or a client asked for can neither overflow nor wrap.
pub fn millis_after(now: Millis, delay: std::time::Duration) -> Millis {
    let delay = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    now.saturating_add(delay).clamp(0, MAX_MILLIS)
}

/// A stored time as a [`std::time::SystemTime`] (clamped as [`to_rfc3339`] is).
pub fn system_time(ms: Millis) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.clamp(0, MAX_MILLIS) as u64)
}

/// Formats a time as RFC 3339 (UTC, milliseconds). Any stored value
/// renders: one before 1970 or after year 9999 shows as that bound.
pub fn to_rfc3339(ms: Millis) -> String {
    humantime::format_rfc3339_millis(system_time(ms)).to_string()
}

/// Parses an RFC 3339 time.
pub fn from_rfc3339(text: &str) -> Result<Millis, String> {
    // A time without an offset is refused, not guessed to be UTC: the
    // client's local time would silently be off by hours.
    let t: jiff::Timestamp = text.trim().parse().map_err(|e| {
        format!("{text:?} is not an RFC 3339 time with an offset (2030-01-01T00:00:00Z, 2030-01-01T02:00:00+02:00): {e}")
    })?;
    let ms = t.as_millisecond();
    if ms < 0 {
        return Err(format!("{text:?} is before 1970"));
    }
    Ok(ms.min(MAX_MILLIS))
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn any_stored_time_renders_and_no_computed_time_overflows() {
        assert_eq!(to_rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(to_rfc3339(i64::MIN), "1970-01-01T00:00:00.000Z");
        assert_eq!(millis_after(1_000, Duration::from_millis(10u64.pow(15))), MAX_MILLIS);
        assert_eq!(millis_after(1_000, Duration::from_millis(u64::MAX)), MAX_MILLIS, "2^64 ms does not wrap to the past");
        assert_eq!(millis_after(1_000, Duration::from_millis(500)), 1_500);
    }

    #[test]
    fn times_need_an_offset_and_any_offset_is_taken() {
        let utc = from_rfc3339("2030-01-01T00:00:00Z").unwrap();
        assert_eq!(from_rfc3339("2030-01-01T02:00:00+02:00").unwrap(), utc);
        assert_eq!(from_rfc3339("2029-12-31T19:00:00-05:00").unwrap(), utc);
        assert_eq!(from_rfc3339("2030-01-01T00:00:00.250Z").unwrap(), utc + 250);
        for zoneless in ["2030-01-01T00:00:00", "2030-01-01 00:00:00", "2030-01-01"] {
            let e = from_rfc3339(zoneless).unwrap_err();
            assert!(e.contains("offset"), "{zoneless}: {e}");
        }
        assert!(from_rfc3339("1969-12-31T23:59:59Z").unwrap_err().contains("before 1970"));
    }
}
