//! Follows the live registry: starts a schedule task or a loop task for
//! each scheduled or continuous plugin, and restarts or stops it when a
//! swap changes or removes its trigger. A swap that keeps the trigger
//! leaves the task running: its next tick or pass simply uses the new
//! version.

use super::handle::TriggerHandle;
use super::{looper, scheduler};
use crate::plugin::Trigger;
use std::collections::BTreeMap;
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct Service {
    trigger: Trigger,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Service {
    async fn stop(self) {
        self.stop.send_replace(true);
        self.join().await;
    }

    async fn join(self) {
        if let Err(e) = self.task.await {
            tracing::error!("trigger task failed: {e}");
        }
    }
}

/// The triggers that need a task of their own, by plugin.
fn wanted(handle: &TriggerHandle) -> BTreeMap<String, Trigger> {
    let runner = handle.runner();
    runner
        .kinds()
        .into_iter()
        .filter_map(|name| {
            let trigger = runner.kind(&name)?.trigger;
            matches!(trigger, Trigger::Schedule(_) | Trigger::Continuous(_)).then_some((name, trigger))
        })
        .collect()
}

fn spawn(handle: &TriggerHandle, name: &str, trigger: &Trigger) -> Service {
    let (stop, stopped) = watch::channel(false);
    let (d, name) = (handle.clone(), name.to_string());
    let task = match trigger.clone() {
        Trigger::Schedule(schedule) => tokio::spawn(scheduler::run_schedule(d, name, schedule, stopped)),
        Trigger::Continuous(continuous) => tokio::spawn(looper::run_loop(d, name, continuous, stopped)),
        Trigger::Queued | Trigger::Startup { .. } => unreachable!("only schedules and loops have tasks"),
    };
    Service { trigger: trigger.clone(), stop, task }
}

/// Runs until `stopping` turns true, then stops every task and waits for them.
pub(super) async fn supervise(handle: TriggerHandle, mut changes: Option<watch::Receiver<u64>>, mut stopping: watch::Receiver<bool>) {
    let mut services: BTreeMap<String, Service> = BTreeMap::new();
    loop {
        let wanted = wanted(&handle);
        let stale: Vec<String> =
            services.iter().filter(|(name, s)| wanted.get(*name) != Some(&s.trigger)).map(|(name, _)| name.clone()).collect();
        for name in stale {
            if let Some(service) = services.remove(&name) {
                tracing::info!(plugin = %name, "trigger changed or plugin removed; stopping its task");
                service.stop().await;
            }
        }
        for (name, trigger) in &wanted {
            if !services.contains_key(name) {
                services.insert(name.clone(), spawn(&handle, name, trigger));
            }
        }
        let changed = async {
            match changes.as_mut() {
                Some(changes) => changes.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            alive = changed => if !alive { changes = None },
            _ = stopping.changed() => break,
        }
    }
    // All at once: each loop's pass gets the whole grace period.
    for service in services.values() {
        service.stop.send_replace(true);
    }
    for (_, service) in services {
        service.join().await;
    }
}
