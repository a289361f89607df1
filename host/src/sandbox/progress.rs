//! A run's progress as the plugin reports it (`context.progress`), shared
//! with the host while the run goes on: the iteration writes the latest,
//! the host reads what changed when it next looks (its heartbeat), so a
//! plugin calling `progress` in a tight loop costs a lock, never a write.

use std::sync::{Arc, Mutex};

/// What a plugin last reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedProgress {
    /// 0 to 100.
    pub percent: u8,
    /// At most [`MAX_PROGRESS_NOTE_BYTES`](super::MAX_PROGRESS_NOTE_BYTES).
    pub note: Option<String>,
}

/// The latest progress of one run, and whether the host has seen it.
#[derive(Debug, Clone, Default)]
pub struct ProgressCell {
    inner: Arc<Mutex<Slot>>,
}

#[derive(Debug, Default)]
struct Slot {
    latest: Option<ReportedProgress>,
    unseen: bool,
}

impl ProgressCell {
    pub(crate) fn set(&self, progress: ReportedProgress) {
        let mut slot = self.inner.lock().expect("progress poisoned");
        slot.latest = Some(progress);
        slot.unseen = true;
    }

    /// The latest progress, if any.
    pub fn latest(&self) -> Option<ReportedProgress> {
        self.inner.lock().expect("progress poisoned").latest.clone()
    }

    /// The latest progress if it changed since the last call.
    pub fn take_unseen(&self) -> Option<ReportedProgress> {
        let mut slot = self.inner.lock().expect("progress poisoned");
        if !std::mem::take(&mut slot.unseen) {
            return None;
        }
        slot.latest.clone()
    }
}

impl PartialEq for ProgressCell {
    /// The same cell (the same run), not the same value.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl Eq for ProgressCell {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_changed_is_seen_once_and_the_latest_stays() {
        let cell = ProgressCell::default();
        assert_eq!(cell.take_unseen(), None, "nothing reported yet");
        cell.set(ReportedProgress { percent: 10, note: None });
        cell.set(ReportedProgress { percent: 20, note: Some("half way there".into()) });
        assert_eq!(cell.take_unseen(), Some(ReportedProgress { percent: 20, note: Some("half way there".into()) }), "the latest, not each report");
        assert_eq!(cell.take_unseen(), None, "seen already");
        assert_eq!(cell.latest().map(|p| p.percent), Some(20));
        assert_eq!(cell.clone(), cell, "a clone is the same cell");
        assert_ne!(ProgressCell::default(), cell);
    }
}
