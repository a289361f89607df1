//! Guest values copied, within their bound, at the moment wasmtime lifts
//! them: while the guest still owns the memory they live in.
//!
//! wasmtime calls an export's post-return function as soon as it has lifted
//! the export's results, and post-return hands their memory back to the
//! guest's allocator, which may reuse it at once (StarlingMonkey's and
//! CPython's write their free-list links into it). A view into guest memory
//! (`WasmList`, `WasmStr`) that outlives the lift reads whatever the
//! allocator wrote there since. The types here copy during the lift
//! instead, and at most their bound: the length the guest handed over is
//! kept beside what was copied, so an oversized value is refused, or a long
//! text cut, naming its real size without ever being copied whole.
//!
//! They implement wasmtime's `ComponentType` and `Lift` by hand, through the
//! items wasmtime exposes for its own derive macros (`__internal`): the
//! same code `#[derive(Lift)]` writes for a record. Those items are not
//! covered by wasmtime's semver, which is why the workspace pins 48.0.x; a
//! wasmtime that changed them fails this file's build, not a run.

use super::plugin_text;
use wasmtime::ValRaw;
use wasmtime::component::__internal::wasmtime_environ::component::StringEncoding;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext};
use wasmtime::component::{ComponentType, Lift, WasmList, WasmStr};

/// The canonical ABI's `latin1+utf16` tag: set in a string's length when
/// the string is UTF-16 rather than Latin-1.
const UTF16_TAG: usize = 1 << 31;

tokio::task_local! {
    /// The largest [`GuestBytes`] copied while lifting on this task: the
    /// run's `max_output_bytes`, set around the call that lifts `run`'s
    /// result ([`with_bytes_limit`]). Unset, nothing is copied, so a
    /// forgotten scope refuses every value rather than holding any size.
    static BYTES_LIMIT: usize;
}

/// Runs `call` with [`GuestBytes`] lifted during it copied up to `limit`
/// bytes. A task-local because wasmtime gives a lift no context of the
/// caller's: it is set around every poll of `call`, on whichever thread
/// polls it, and the lift runs inside that poll.
pub(crate) async fn with_bytes_limit<F: Future>(limit: usize, call: F) -> F::Output {
    BYTES_LIMIT.scope(limit, call).await
}

/// A `list<u8>` from the guest: its bytes, copied when it holds at most
/// the lift's limit, and its length either way.
#[derive(Debug)]
pub(crate) struct GuestBytes {
    bytes: Option<Vec<u8>>,
    len: usize,
}

impl GuestBytes {
    /// The bytes, or `Err(len)` when there were more than the limit and
    /// none were copied.
    pub(crate) fn into_bytes(self) -> Result<Vec<u8>, usize> {
        self.bytes.ok_or(self.len)
    }

    fn lift(cx: &mut LiftContext<'_>, (ptr, len): (usize, usize)) -> wasmtime::Result<Self> {
        let memory = cx.memory();
        let Some(bytes) = ptr.checked_add(len).and_then(|end| memory.get(ptr..end)) else {
            wasmtime::bail!("list pointer/length out of bounds of memory");
        };
        let limit = BYTES_LIMIT.try_with(|limit| *limit).unwrap_or(0);
        if len > limit {
            return Ok(Self { bytes: None, len });
        }
        cx.consume_fuel(len)?;
        Ok(Self { bytes: Some(bytes.to_vec()), len })
    }
}

/// A `string` from the guest: its first `LIMIT` bytes as UTF-8 (cut on a
/// character boundary) and its whole length in UTF-8 bytes; or why it is
/// not text. The whole string is validated where it lies; only the kept
/// prefix is copied.
#[derive(Debug)]
pub(crate) struct GuestText<const LIMIT: usize> {
    prefix: Result<String, InvalidText>,
    len: usize,
}

/// A guest string that is not valid in its encoding: the canonical ABI
/// calls that a trap, and so does the host, naming where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InvalidText(String);

impl<const LIMIT: usize> GuestText<LIMIT> {
    /// The kept prefix and the whole length in UTF-8 bytes.
    pub(crate) fn prefix(&self) -> Result<(&str, usize), InvalidText> {
        match &self.prefix {
            Ok(prefix) => Ok((prefix, self.len)),
            Err(e) => Err(e.clone()),
        }
    }

    fn lift(cx: &mut LiftContext<'_>, (ptr, len): (usize, usize)) -> wasmtime::Result<Self> {
        let memory = cx.memory();
        let text = match cx.options().string_encoding {
            StringEncoding::Utf8 => utf8_prefix(in_bounds(memory, ptr, Some(len), 1)?, LIMIT),
            StringEncoding::Utf16 => utf16_prefix(in_bounds(memory, ptr, len.checked_mul(2), 2)?, LIMIT),
            StringEncoding::CompactUtf16 if len & UTF16_TAG != 0 => {
                utf16_prefix(in_bounds(memory, ptr, (len ^ UTF16_TAG).checked_mul(2), 2)?, LIMIT)
            }
            StringEncoding::CompactUtf16 => Ok(latin1_prefix(in_bounds(memory, ptr, Some(len), 2)?, LIMIT)),
        };
        Ok(match text {
            Ok((prefix, len)) => {
                cx.consume_fuel(prefix.len())?;
                Self { prefix: Ok(prefix), len }
            }
            Err(invalid) => Self { prefix: Err(invalid), len },
        })
    }
}

/// The `byte_len` bytes at `ptr`, checked as `WasmStr` checks them.
fn in_bounds(memory: &[u8], ptr: usize, byte_len: Option<usize>, align: usize) -> wasmtime::Result<&[u8]> {
    if ptr % align != 0 {
        wasmtime::bail!("string pointer not aligned to {align}");
    }
    match byte_len.and_then(|len| Some(ptr..ptr.checked_add(len)?)).and_then(|range| memory.get(range)) {
        Some(bytes) => Ok(bytes),
        None => wasmtime::bail!("string pointer/length out of bounds of memory"),
    }
}

fn utf8_prefix(bytes: &[u8], limit: usize) -> Result<(String, usize), InvalidText> {
    let text = std::str::from_utf8(bytes).map_err(|e| InvalidText(e.to_string()))?;
    Ok((plugin_text::prefix(text, limit).to_string(), text.len()))
}

fn utf16_prefix(bytes: &[u8], limit: usize) -> Result<(String, usize), InvalidText> {
    let units = bytes.as_chunks::<2>().0.iter().map(|unit| u16::from_le_bytes(*unit));
    let (mut kept, mut len) = (String::new(), 0);
    for c in char::decode_utf16(units) {
        let c = c.map_err(|e| InvalidText(e.to_string()))?;
        if kept.len() == len && len + c.len_utf8() <= limit {
            kept.push(c);
        }
        len += c.len_utf8();
    }
    Ok((kept, len))
}

fn latin1_prefix(bytes: &[u8], limit: usize) -> (String, usize) {
    let (mut kept, mut len) = (String::new(), 0);
    for c in bytes.iter().map(|b| char::from(*b)) {
        if kept.len() == len && len + c.len_utf8() <= limit {
            kept.push(c);
        }
        len += c.len_utf8();
    }
    (kept, len)
}

/// The `(ptr, len)` pair of a list or string, as passed in registers.
fn pair_from_flat(src: &[ValRaw; 2]) -> wasmtime::Result<(usize, usize)> {
    Ok((usize::try_from(src[0].get_u32())?, usize::try_from(src[1].get_u32())?))
}

/// The `(ptr, len)` pair of a list or string, as stored in memory.
fn pair_from_memory(bytes: &[u8]) -> wasmtime::Result<(usize, usize)> {
    let word = |at: usize| bytes.get(at..at + 4).and_then(|w| w.try_into().ok()).map(u32::from_le_bytes);
    match (word(0), word(4)) {
        (Some(ptr), Some(len)) => Ok((usize::try_from(ptr)?, usize::try_from(len)?)),
        _ => wasmtime::bail!("pointer pair out of bounds"),
    }
}

// SAFETY: the same ABI, type check and lowered form as `WasmList<u8>`,
// whose lift this replaces; `Lift` reads only what those describe.
unsafe impl ComponentType for GuestBytes {
    type Lower = <WasmList<u8> as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = <WasmList<u8> as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <WasmList<u8> as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: reads the pointer pair the ABI above gives, and guest memory only
// within bounds it checks.
unsafe impl Lift for GuestBytes {
    fn linear_lift_from_flat(cx: &mut LiftContext<'_>, _ty: InterfaceType, src: &Self::Lower) -> wasmtime::Result<Self> {
        Self::lift(cx, pair_from_flat(src)?)
    }

    fn linear_lift_from_memory(cx: &mut LiftContext<'_>, _ty: InterfaceType, bytes: &[u8]) -> wasmtime::Result<Self> {
        Self::lift(cx, pair_from_memory(bytes)?)
    }
}

// SAFETY: as for `GuestBytes`, with `WasmStr`'s ABI.
unsafe impl<const LIMIT: usize> ComponentType for GuestText<LIMIT> {
    type Lower = <WasmStr as ComponentType>::Lower;
    const ABI: CanonicalAbiInfo = <WasmStr as ComponentType>::ABI;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <WasmStr as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: as for `GuestBytes`.
unsafe impl<const LIMIT: usize> Lift for GuestText<LIMIT> {
    fn linear_lift_from_flat(cx: &mut LiftContext<'_>, _ty: InterfaceType, src: &Self::Lower) -> wasmtime::Result<Self> {
        Self::lift(cx, pair_from_flat(src)?)
    }

    fn linear_lift_from_memory(cx: &mut LiftContext<'_>, _ty: InterfaceType, bytes: &[u8]) -> wasmtime::Result<Self> {
        Self::lift(cx, pair_from_memory(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_keeps_a_prefix_on_a_character_boundary_and_the_whole_length() {
        let text = "é".repeat(10);
        assert_eq!(utf8_prefix(text.as_bytes(), 5).unwrap(), ("éé".to_string(), 20));
        assert_eq!(utf8_prefix(b"short", 100).unwrap(), ("short".to_string(), 5));
        let utf16: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert_eq!(utf16_prefix(&utf16, 5).unwrap(), ("éé".to_string(), 20));
        let emoji: Vec<u8> = "a😀b".encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert_eq!(utf16_prefix(&emoji, 100).unwrap(), ("a😀b".to_string(), 6));
        assert_eq!(utf16_prefix(&emoji, 4).unwrap(), ("a".to_string(), 6), "no half of a character, and nothing after a cut");
        assert_eq!(latin1_prefix(&[b'a', 0xe9, b'b'], 100), ("aéb".to_string(), 4));
        assert_eq!(latin1_prefix(&[0xe9, b'a', 0xe9], 2), ("é".to_string(), 5));
    }

    #[test]
    fn invalid_text_is_named_wherever_it_is_even_past_the_prefix() {
        let mut bytes = b"fine so far ".to_vec();
        bytes.push(0xa5);
        let e = utf8_prefix(&bytes, 4).unwrap_err();
        assert!(e.0.contains("invalid utf-8") && e.0.contains("index 12"), "{e}");
        let lone_surrogate = [0x00, 0xd8, b'a', 0x00];
        assert!(utf16_prefix(&lone_surrogate, 100).is_err());
    }

    #[test]
    fn pointers_outside_memory_or_misaligned_are_errors() {
        let memory = [0u8; 16];
        assert!(in_bounds(&memory, 8, Some(8), 1).is_ok());
        assert!(in_bounds(&memory, 8, Some(9), 1).is_err());
        assert!(in_bounds(&memory, usize::MAX, Some(2), 1).is_err());
        assert!(in_bounds(&memory, 0, None, 2).is_err(), "a length that overflowed");
        assert!(in_bounds(&memory, 3, Some(2), 2).is_err());
        assert_eq!(pair_from_memory(&[1, 0, 0, 0, 2, 0, 0, 0]).unwrap(), (1, 2));
    }
}
