//! This host's runs per minute, queue and kind (how many, how many
//! failed, how long they waited from due to start), kept in memory as
//! runs end and written to the store every [`FLUSH_INTERVAL`]: the
//! dashboard draws every host's rows as its throughput and queue-delay
//! charts. A flush is one small write (a row per queue and kind that ran
//! this minute), whatever the throughput; rows are kept for [`KEPT`].

use crate::queue::{JobStore, Millis, MinuteRuns, SharedClock};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How often a host writes its running totals.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(10);
/// How long the store keeps per-minute rows.
pub const KEPT: Duration = Duration::from_secs(2 * 3600);
pub const MINUTE_MS: Millis = 60_000;

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    runs: u64,
    failures: u64,
    delay_ms_sum: i64,
    delay_ms_max: i64,
}

/// The totals of minutes not yet written for good.
#[derive(Debug, Default)]
pub struct RunMinutes {
    /// By (minute, queue, kind); the bool says whether it changed since written.
    open: Mutex<BTreeMap<(Millis, String, String), (Totals, bool)>>,
}

impl RunMinutes {
    /// A run of `kind` on `queue` ended at `now`, `delay_ms` after its job was due.
    pub fn record(&self, now: Millis, queue: &str, kind: &str, delay_ms: i64, failed: bool) {
        let minute = now - now.rem_euclid(MINUTE_MS);
        let mut open = self.open.lock().expect("poisoned");
        let (t, dirty) = open.entry((minute, queue.to_string(), kind.to_string())).or_default();
        t.runs += 1;
        t.failures += u64::from(failed);
        let delay = delay_ms.max(0);
        t.delay_ms_sum = t.delay_ms_sum.saturating_add(delay);
        t.delay_ms_max = t.delay_ms_max.max(delay);
        *dirty = true;
    }

    /// The rows changed since the last write, marked written; minutes
    /// before the one of `now` are then forgotten (their rows are final).
    fn take_changed(&self, host: &str, now: Millis) -> Vec<MinuteRuns> {
        let mut open = self.open.lock().expect("poisoned");
        let rows = open
            .iter_mut()
            .filter(|(_, (_, dirty))| *dirty)
            .map(|((minute, queue, kind), (t, dirty))| {
                *dirty = false;
                MinuteRuns {
                    minute: *minute,
                    host: host.to_string(),
                    queue: queue.clone(),
                    kind: kind.clone(),
                    runs: t.runs,
                    failures: t.failures,
                    delay_ms_sum: t.delay_ms_sum,
                    delay_ms_max: t.delay_ms_max,
                }
            })
            .collect();
        let current = now - now.rem_euclid(MINUTE_MS);
        open.retain(|(minute, _, _), _| *minute >= current);
        rows
    }

    /// Rows a failed write did not store: written again next time.
    fn put_back(&self, rows: &[MinuteRuns]) {
        let mut open = self.open.lock().expect("poisoned");
        for r in rows {
            let key = (r.minute, r.queue.clone(), r.kind.clone());
            let (t, dirty) = open.entry(key).or_default();
            // A run recorded since holds at least these totals.
            if t.runs < r.runs {
                *t = Totals { runs: r.runs, failures: r.failures, delay_ms_sum: r.delay_ms_sum, delay_ms_max: r.delay_ms_max };
            }
            *dirty = true;
        }
    }
}

/// Writes `minutes` every [`FLUSH_INTERVAL`] until the host stops, and
/// once more then.
pub async fn flush_loop(minutes: Arc<RunMinutes>, store: Arc<dyn JobStore>, clock: SharedClock, host: String, mut stopping: watch::Receiver<bool>) {
    loop {
        let stop = tokio::select! {
            () = tokio::time::sleep(FLUSH_INTERVAL) => false,
            _ = stopping.changed() => true,
        };
        let now = clock.now();
        let rows = minutes.take_changed(&host, now);
        let keep_since = now - KEPT.as_millis() as Millis;
        if let Err(e) = store.record_minutes(rows.clone(), keep_since).await {
            tracing::warn!("writing the runs per minute failed (the dashboard's charts lag; tried again in {FLUSH_INTERVAL:?}): {e}");
            minutes.put_back(&rows);
        }
        if stop {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_add_up_per_minute_and_a_written_minute_is_written_again_only_when_it_changes() {
        let m = RunMinutes::default();
        m.record(60_500, "default", "echo", 30, false);
        m.record(61_000, "default", "echo", 10, true);
        m.record(61_000, "default", "echo", -5, false);
        m.record(125_000, "mail", "acme/send", 7, false);
        let rows = m.take_changed("h", 125_000);
        assert_eq!(rows.len(), 2);
        let echo = &rows[0];
        assert_eq!((echo.minute, echo.runs, echo.failures, echo.delay_ms_sum, echo.delay_ms_max), (60_000, 3, 1, 40, 30));
        assert_eq!((rows[1].minute, rows[1].queue.as_str(), rows[1].host.as_str()), (120_000, "mail", "h"));
        assert!(m.take_changed("h", 125_000).is_empty(), "nothing changed");
        m.record(126_000, "mail", "acme/send", 1, false);
        let again = m.take_changed("h", 126_000);
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].runs, again[0].delay_ms_sum), (2, 8), "the minute's running totals, not the change");
    }

    #[test]
    fn rows_a_failed_write_kept_are_written_next_time() {
        let m = RunMinutes::default();
        m.record(1_000, "default", "echo", 1, false);
        let rows = m.take_changed("h", 61_000);
        assert!(m.open.lock().unwrap().is_empty(), "a past minute is forgotten once written");
        m.put_back(&rows);
        assert_eq!(m.take_changed("h", 61_000)[0].runs, 1);
    }
}
