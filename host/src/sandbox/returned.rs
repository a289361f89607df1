//! What `run` hands back, copied while it is lifted (see [`super::lifted`]):
//! the `ok` bytes only when they are within `max_output_bytes`, an error
//! message's first [`MAX_ERROR_MESSAGE_BYTES`]. Nothing here reads guest
//! memory after the call: by then post-return has freed it.

use super::Outcome;
use super::lifted::{GuestBytes, GuestText};
use super::plugin_text::{self, MAX_ERROR_MESSAGE_BYTES};
use std::time::Duration;
use wasmtime::component::{ComponentType, Lift};

/// An error message as lifted: its first [`MAX_ERROR_MESSAGE_BYTES`].
type Message = GuestText<MAX_ERROR_MESSAGE_BYTES>;

/// `retry-request`, its message bounded.
#[derive(ComponentType, Lift)]
#[component(record)]
pub(crate) struct RawRetryRequest {
    message: Message,
    #[component(name = "delay-ms")]
    delay_ms: Option<u64>,
}

/// `job-error`, its messages bounded.
#[derive(ComponentType, Lift)]
#[component(variant)]
pub(crate) enum RawJobError {
    #[component(name = "retry")]
    Retry(RawRetryRequest),
    #[component(name = "invalid-input")]
    InvalidInput(Message),
    #[component(name = "fatal")]
    Fatal(Message),
}

/// The result type of `run`, as the host lifts it. Lift it only inside
/// [`super::lifted::with_bytes_limit`], which bounds the `ok` copy.
pub(crate) type RunResult = Result<GuestBytes, RawJobError>;

/// Turns what `run` returned into an outcome. A message that is not valid
/// in its encoding is the plugin's fault: `trapped`, as the canonical ABI
/// would have it.
pub(crate) fn outcome_of(returned: RunResult, max_output_bytes: usize) -> Outcome {
    match returned {
        Ok(list) => match list.into_bytes() {
            Ok(bytes) => Outcome::Ok(bytes),
            Err(size) => Outcome::OutputTooLarge { size, limit: max_output_bytes },
        },
        Err(RawJobError::Retry(r)) => match message(&r.message) {
            Ok(message) => Outcome::Retry { message, delay: r.delay_ms.map(Duration::from_millis) },
            Err(bad) => bad,
        },
        Err(RawJobError::InvalidInput(m)) => message(&m).map_or_else(|bad| bad, Outcome::InvalidInput),
        Err(RawJobError::Fatal(m)) => message(&m).map_or_else(|bad| bad, Outcome::Fatal),
    }
}

fn message(text: &Message) -> Result<String, Outcome> {
    match text.prefix() {
        Ok((kept, full_len)) => Ok(plugin_text::bounded(kept, full_len, MAX_ERROR_MESSAGE_BYTES)),
        Err(e) => Err(Outcome::Trapped { trap: None, message: format!("the plugin returned an error message that is not a valid string: {e}") }),
    }
}
