//! The `kiln:worker/context` interface, linked by hand instead of through
//! the generated bindings: its strings are lifted as [`GuestText`], so the
//! host copies only the part it keeps (a log line's first 4 KiB, a progress
//! note's first 256 bytes), never the whole string a plugin hands over.

use super::bindings::kiln::worker::context::LogLevel;
use super::iteration::IterationState;
use super::lifted::GuestText;
use super::logs::{LogSource, MAX_LOG_LINE_BYTES};
use super::plugin_text::{self, MAX_PROGRESS_NOTE_BYTES};
use super::progress::ReportedProgress;
use std::time::Instant;
use wasmtime::StoreContextMut;
use wasmtime::component::Linker;

/// The interface's name as components import it.
pub(crate) const INTERFACE: &str = "kiln:worker/context@0.1.0";

/// Adds `cancelled`, `time-left-ms`, `log` and `progress` to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<IterationState>) -> wasmtime::Result<()> {
    let mut context = linker.instance(INTERFACE)?;
    context.func_wrap("cancelled", |store: StoreContextMut<'_, IterationState>, (): ()| Ok((store.data().stop.is_cancelled(),)))?;
    context.func_wrap("time-left-ms", |store: StoreContextMut<'_, IterationState>, (): ()| {
        let left = store.data().deadline.saturating_duration_since(Instant::now());
        Ok((u64::try_from(left.as_millis()).unwrap_or(u64::MAX),))
    })?;
    context.func_wrap("log", |mut store: StoreContextMut<'_, IterationState>, (level, message): (LogLevel, GuestText<MAX_LOG_LINE_BYTES>)| {
        let (kept, full_len) = message.prefix()?;
        store.data_mut().log.line(LogSource::Context, tracing_level(level), kept, full_len);
        Ok(())
    })?;
    context.func_wrap(
        "progress",
        |mut store: StoreContextMut<'_, IterationState>, (percent, note): (u8, Option<GuestText<MAX_PROGRESS_NOTE_BYTES>>)| {
            let percent = percent.min(100);
            let note = match note {
                Some(note) => {
                    let (kept, full_len) = note.prefix()?;
                    Some(plugin_text::bounded(kept, full_len, MAX_PROGRESS_NOTE_BYTES))
                }
                None => None,
            };
            let state = store.data_mut();
            if let Some(note) = &note {
                state.log.line(LogSource::Context, tracing::Level::DEBUG, &format!("progress {percent}%: {note}"), 0);
            }
            state.progress.set(ReportedProgress { percent, note: note.map(|n| state.log.redactor().text(&n).into_owned()) });
            Ok(())
        },
    )?;
    Ok(())
}

fn tracing_level(level: LogLevel) -> tracing::Level {
    match level {
        LogLevel::Trace => tracing::Level::TRACE,
        LogLevel::Debug => tracing::Level::DEBUG,
        LogLevel::Info => tracing::Level::INFO,
        LogLevel::Warn => tracing::Level::WARN,
        LogLevel::Error => tracing::Level::ERROR,
    }
}
