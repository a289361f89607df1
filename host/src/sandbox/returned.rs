//! What `run` hands back, lifted lazily: the `ok` bytes and the error
//! messages stay in the guest's memory (the canonical ABI gives their
//! length first) until the host has checked their size, so an oversized
//! value is refused, or a long message cut, without being copied whole.

use super::Outcome;
use super::iteration::IterationState;
use super::plugin_text::{self, MAX_ERROR_MESSAGE_BYTES};
use std::time::Duration;
use wasmtime::component::{ComponentType, Lift, WasmList, WasmStr};
use wasmtime::{AsContext, StoreContext};

/// `retry-request`, with its message left in guest memory.
#[derive(ComponentType, Lift)]
#[component(record)]
pub(crate) struct RawRetryRequest {
    message: WasmStr,
    #[component(name = "delay-ms")]
    delay_ms: Option<u64>,
}

/// `job-error`, with its messages left in guest memory.
#[derive(ComponentType, Lift)]
#[component(variant)]
pub(crate) enum RawJobError {
    #[component(name = "retry")]
    Retry(RawRetryRequest),
    #[component(name = "invalid-input")]
    InvalidInput(WasmStr),
    #[component(name = "fatal")]
    Fatal(WasmStr),
}

/// The result type of `run`, as the host lifts it.
pub(crate) type RunResult = Result<WasmList<u8>, RawJobError>;

/// Turns what `run` returned into an outcome, copying at most
/// `max_output_bytes` of an `ok` value and [`MAX_ERROR_MESSAGE_BYTES`] of
/// an error message. A string that is not valid UTF-8 is the plugin's
/// fault: `trapped`, as the canonical ABI would have it.
pub(crate) fn outcome_of(store: StoreContext<'_, IterationState>, returned: RunResult, max_output_bytes: usize) -> Outcome {
    match returned {
        Ok(list) if list.len() > max_output_bytes => Outcome::OutputTooLarge { size: list.len(), limit: max_output_bytes },
        Ok(list) => Outcome::Ok(list.as_le_slice(store).to_vec()),
        Err(RawJobError::Retry(r)) => match message(store, &r.message) {
            Ok(message) => Outcome::Retry { message, delay: r.delay_ms.map(Duration::from_millis) },
            Err(bad) => bad,
        },
        Err(RawJobError::InvalidInput(m)) => message(store, &m).map_or_else(|bad| bad, Outcome::InvalidInput),
        Err(RawJobError::Fatal(m)) => message(store, &m).map_or_else(|bad| bad, Outcome::Fatal),
    }
}

fn message(store: StoreContext<'_, IterationState>, text: &WasmStr) -> Result<String, Outcome> {
    match text.to_str(store.as_context()) {
        Ok(text) => Ok(plugin_text::bounded(&text, text.len(), MAX_ERROR_MESSAGE_BYTES)),
        Err(e) => Err(Outcome::Trapped { trap: None, message: format!("the plugin returned an error message that is not valid UTF-8: {e}") }),
    }
}
