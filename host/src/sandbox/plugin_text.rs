//! Text that came from a plugin: cut to a bound and with its control
//! characters escaped before the host holds it, stores it or logs it, so a
//! plugin can neither grow the host nor forge the host's own log lines.

use std::fmt::Write as _;

/// The largest error message a plugin's `retry`, `invalid-input` or
/// `fatal` keeps: enough for a cause and the first lines of a trace. It is
/// stored with every attempt and shown by the API, so it stays small.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 4 << 10;
/// The largest progress note (`context.progress`): a short status line.
pub const MAX_PROGRESS_NOTE_BYTES: usize = 256;

/// `text` cut to at most `limit` bytes (on a character boundary), with a
/// note of the full size when cut, and control characters escaped.
/// `full_len` is the size the plugin handed over (`text` may be a prefix).
pub fn bounded(text: &str, full_len: usize, limit: usize) -> String {
    let kept = prefix(text, limit);
    let mut out = escape_controls(kept);
    if kept.len() < full_len {
        let _ = write!(out, " … [cut: {full_len} bytes in all]");
    }
    out
}

/// The first `limit` bytes of `text`, cut on a character boundary.
pub(crate) fn prefix(text: &str, limit: usize) -> &str {
    &text[..text.floor_char_boundary(limit)]
}

/// Escapes what could start a new log line or rewrite a terminal: C0 and
/// C1 controls (newline, carriage return, ESC, …), DEL, the Unicode line
/// and paragraph separators and the bidirectional overrides. Tabs stay.
pub fn escape_controls(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_and_escapes_cannot_start_a_forged_line() {
        let forged = "done\nERROR kiln::serve: disk full\r\x1b[2Kok\u{2028}x\u{202e}y\tz";
        let escaped = escape_controls(forged);
        assert!(!escaped.contains('\n') && !escaped.contains('\r') && !escaped.contains('\x1b'), "{escaped}");
        assert_eq!(escaped, "done\\nERROR kiln::serve: disk full\\r\\u{1b}[2Kok\\u{2028}x\\u{202e}y\tz");
        assert_eq!(escape_controls("plain text"), "plain text");
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary_with_its_size() {
        let text = "é".repeat(10); // 20 bytes
        let cut = bounded(&text, 20, 5);
        assert_eq!(cut, "éé … [cut: 20 bytes in all]");
        assert_eq!(bounded("short", 5, 100), "short");
        assert!(bounded(&"x".repeat(1 << 20), 50 << 20, MAX_ERROR_MESSAGE_BYTES).len() < MAX_ERROR_MESSAGE_BYTES + 64);
    }
}
