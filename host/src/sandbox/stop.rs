//! Stopping an iteration from outside: the `stoppingToken` of a run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use tokio::sync::Notify;
use wasmtime::Engine;

const RUNNING: u8 = 0;
const CANCEL_REQUESTED: u8 = 1;
const INTERRUPT_REQUESTED: u8 = 2;

/// A handle that asks one running iteration to stop.
///
/// [`cancel`](Self::cancel) is the cooperative step: the plugin's
/// `cancelled()` turns true. [`interrupt`](Self::interrupt) is the hard one:
/// it bumps the engine's epoch at once, so a guest in a loop reaches its
/// epoch check within microseconds instead of at the next tick, and a guest
/// parked in a host call is dropped.
#[derive(Clone, Debug)]
pub struct StopSignal {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: AtomicU8,
    changed: Notify,
    /// Bumped on interrupt; `None` for runs that are not wasm (benchmarks'
    /// native baseline).
    engine: Option<Engine>,
}

impl StopSignal {
    pub(crate) fn new(engine: Engine) -> Self {
        Self::with_engine(Some(engine))
    }

    /// A signal for work that is not a sandbox iteration: `interrupt` only
    /// sets the flag and wakes waiters.
    pub fn standalone() -> Self {
        Self::with_engine(None)
    }

    fn with_engine(engine: Option<Engine>) -> Self {
        Self { inner: Arc::new(Inner { state: AtomicU8::new(RUNNING), changed: Notify::new(), engine }) }
    }

    /// Asks the plugin to stop: `cancelled()` returns true from now on.
    pub fn cancel(&self) {
        let _ = self.inner.state.compare_exchange(
            RUNNING,
            CANCEL_REQUESTED,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        self.inner.changed.notify_waiters();
    }

    /// Stops the plugin now, whether or not it cooperates.
    pub fn interrupt(&self) {
        self.inner.state.store(INTERRUPT_REQUESTED, Ordering::SeqCst);
        self.inner.changed.notify_waiters();
        // Every store's epoch callback runs at its next check; only this
        // iteration's sees the flag. Waiting for the ticker would cost a tick.
        if let Some(engine) = &self.inner.engine {
            engine.increment_epoch();
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.inner.state.load(Ordering::SeqCst) != RUNNING
    }

    pub fn is_interrupted(&self) -> bool {
        self.inner.state.load(Ordering::SeqCst) == INTERRUPT_REQUESTED
    }

    /// Resolves once [`interrupt`](Self::interrupt) has been called.
    pub async fn interrupted(&self) {
        self.until(Self::is_interrupted).await
    }

    /// Resolves once [`cancel`](Self::cancel) or `interrupt` has been called.
    pub async fn cancelled(&self) {
        self.until(Self::is_cancelled).await
    }

    /// Resolves once `said` holds, looking again at every change.
    async fn until(&self, said: fn(&Self) -> bool) {
        loop {
            let changed = self.inner.changed.notified();
            if said(self) {
                return;
            }
            changed.await;
        }
    }
}
