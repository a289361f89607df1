//! What the dashboard charts and lists of the host's runs, each scoped to
//! the caller: runs per minute of its kinds, its schedules' last ticks,
//! its loops and who holds them, and the pending jobs of one of its kinds
//! (a plugin's removal waits on them).

use super::{JobService, ServiceError};
use crate::queue::{LoopState, Millis, MinuteRuns, ScheduleState};
use crate::tenant::Caller;

impl JobService {
    /// Every host's runs per minute since `since`, of the caller's kinds.
    pub async fn minutes(&self, caller: &Caller, since: Millis) -> Result<Vec<MinuteRuns>, ServiceError> {
        let rows = self.dispatcher.store().minutes(since).await?;
        Ok(rows.into_iter().filter(|r| caller.owns(&r.kind)).collect())
    }

    /// The caller's loops: passes, checkpoint, holder.
    pub async fn loops(&self, caller: &Caller) -> Result<Vec<LoopState>, ServiceError> {
        let loops = self.dispatcher.store().loops().await?;
        Ok(loops.into_iter().filter(|l| caller.owns(&l.name)).collect())
    }

    /// The last tick of the caller's schedule `kind`, and whether it runs.
    pub async fn schedule_state(&self, caller: &Caller, kind: &str) -> Result<ScheduleState, ServiceError> {
        if !caller.owns(kind) {
            return Err(ServiceError::OtherTenants { what: format!("schedule {kind}") });
        }
        Ok(self.dispatcher.store().schedule_state(kind).await?)
    }

    /// Jobs of the caller's kind `kind` not yet done with (waiting or running).
    pub async fn pending_jobs(&self, caller: &Caller, kind: &str) -> Result<u64, ServiceError> {
        if !caller.owns(kind) {
            return Err(ServiceError::OtherTenants { what: format!("plugin {kind}") });
        }
        Ok(self.dispatcher.store().pending_count(kind).await?)
    }
}
