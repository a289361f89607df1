//! Plugin log capture: stdout, stderr and `context.log` become log lines
//! tagged with the job, capped per iteration so a flood cannot grow the host,
//! and escaped so a plugin cannot write a line of the host's log itself.

use crate::capability::Redactor;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Log bytes kept per iteration; past it lines are counted, not kept. 64 KiB
/// holds a few hundred ordinary lines, enough to see why a run failed.
pub const MAX_LOG_BYTES_PER_ITERATION: usize = 64 << 10;
/// A longer line is cut here (a newline-less stream still yields lines).
pub const MAX_LOG_LINE_BYTES: usize = 4 << 10;

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource {
    Stdout,
    Stderr,
    Context,
}

impl LogSource {
    /// As logs and the API name it: `stdout`, `stderr`, or `log` for `context.log`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
            LogSource::Context => "log",
        }
    }
}

/// One captured log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When the host took the line: milliseconds since the Unix epoch.
    pub at_ms: i64,
    pub source: LogSource,
    pub level: tracing::Level,
    pub message: String,
}

/// The capped log of one iteration, shared by its streams and host calls.
#[derive(Debug, Clone)]
pub(crate) struct IterationLog {
    inner: Arc<Mutex<LogBuffer>>,
    /// The plugin's secrets, replaced in every line before it is kept or printed.
    redactor: Redactor,
}

#[derive(Debug)]
struct LogBuffer {
    job_id: String,
    kind: String,
    lines: Vec<LogLine>,
    kept_bytes: usize,
    dropped_bytes: u64,
    partial_stdout: Vec<u8>,
    partial_stderr: Vec<u8>,
}

impl IterationLog {
    pub(crate) fn new(job_id: &str, kind: &str, redactor: Redactor) -> Self {
        Self {
            redactor,
            inner: Arc::new(Mutex::new(LogBuffer {
                job_id: job_id.to_string(),
                kind: kind.to_string(),
                lines: Vec::new(),
                kept_bytes: 0,
                dropped_bytes: 0,
                partial_stdout: Vec::new(),
                partial_stderr: Vec::new(),
            })),
        }
    }

    /// Adds one line; `full_len` is the size the plugin handed over when
    /// `message` is only the prefix the host read of it.
    pub(crate) fn line(&self, source: LogSource, level: tracing::Level, message: &str, full_len: usize) {
        let message = self.redactor.text(message);
        self.inner.lock().expect("log buffer poisoned").push(source, level, message.as_bytes(), full_len);
    }

    pub(crate) fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    fn write(&self, source: LogSource, bytes: &[u8]) {
        let mut buf = self.inner.lock().expect("log buffer poisoned");
        let level = if source == LogSource::Stderr { tracing::Level::WARN } else { tracing::Level::INFO };
        let mut rest = bytes;
        while !rest.is_empty() {
            let partial = buf.partial(source);
            match rest.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    let mut line = std::mem::take(partial);
                    line.extend_from_slice(&rest[..end]);
                    let full_len = line.len();
                    buf.push(source, level, &self.redactor.bytes(&line), full_len);
                    rest = &rest[end + 1..];
                }
                None => {
                    partial.extend_from_slice(rest);
                    rest = &[];
                    while buf.partial(source).len() >= MAX_LOG_LINE_BYTES {
                        let line: Vec<u8> = buf.partial(source).drain(..MAX_LOG_LINE_BYTES).collect();
                        buf.push(source, level, &self.redactor.bytes(&line), MAX_LOG_LINE_BYTES);
                    }
                }
            }
        }
    }

    /// Flushes unterminated output and returns the kept lines and dropped bytes.
    pub(crate) fn finish(&self) -> (Vec<LogLine>, u64) {
        let mut buf = self.inner.lock().expect("log buffer poisoned");
        for source in [LogSource::Stdout, LogSource::Stderr] {
            let line = std::mem::take(buf.partial(source));
            if !line.is_empty() {
                let level = if source == LogSource::Stderr { tracing::Level::WARN } else { tracing::Level::INFO };
                let full_len = line.len();
                buf.push(source, level, &self.redactor.bytes(&line), full_len);
            }
        }
        (std::mem::take(&mut buf.lines), buf.dropped_bytes)
    }

    pub(crate) fn stream(&self, source: LogSource) -> LogStream {
        LogStream { log: self.clone(), source }
    }
}

impl LogBuffer {
    fn partial(&mut self, source: LogSource) -> &mut Vec<u8> {
        match source {
            LogSource::Stderr => &mut self.partial_stderr,
            _ => &mut self.partial_stdout,
        }
    }

    /// Keeps at most [`MAX_LOG_LINE_BYTES`] of a line while the iteration
    /// is under its cap; every byte of `full_len` not kept counts as dropped.
    fn push(&mut self, source: LogSource, level: tracing::Level, bytes: &[u8], full_len: usize) {
        let full_len = full_len.max(bytes.len()) as u64;
        let bytes = &bytes[..bytes.len().min(MAX_LOG_LINE_BYTES)];
        if self.kept_bytes + bytes.len() > MAX_LOG_BYTES_PER_ITERATION {
            if self.dropped_bytes == 0 {
                tracing::warn!(job = %self.job_id, plugin = %self.kind,
                    "log cap of {MAX_LOG_BYTES_PER_ITERATION} bytes reached; further plugin output is dropped");
            }
            self.dropped_bytes += full_len;
            return;
        }
        self.kept_bytes += bytes.len();
        self.dropped_bytes += full_len - bytes.len() as u64;
        let message = super::plugin_text::escape_controls(&String::from_utf8_lossy(bytes));
        let stream = source.as_str();
        match level {
            tracing::Level::ERROR => tracing::error!(target: "kiln::plugin", job = %self.job_id, plugin = %self.kind, stream, "{message}"),
            tracing::Level::WARN => tracing::warn!(target: "kiln::plugin", job = %self.job_id, plugin = %self.kind, stream, "{message}"),
            tracing::Level::INFO => tracing::info!(target: "kiln::plugin", job = %self.job_id, plugin = %self.kind, stream, "{message}"),
            tracing::Level::DEBUG => tracing::debug!(target: "kiln::plugin", job = %self.job_id, plugin = %self.kind, stream, "{message}"),
            tracing::Level::TRACE => tracing::trace!(target: "kiln::plugin", job = %self.job_id, plugin = %self.kind, stream, "{message}"),
        }
        let at_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        self.lines.push(LogLine { at_ms, source, level, message });
    }
}

/// A guest's stdout or stderr: always accepts writes (so a plugin's
/// `println!` never fails), turning them into log lines up to the cap.
#[derive(Debug, Clone)]
pub(crate) struct LogStream {
    log: IterationLog,
    source: LogSource,
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Writes are accepted in chunks of this size; any size works, this one
/// matches wasmtime-wasi's own pipes.
const WRITE_PERMIT: usize = 8192;

impl OutputStream for LogStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.log.write(self.source, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.log.write(self.source, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_lines_across_writes_and_caps_the_total() {
        let log = IterationLog::new("job-1", "test", Redactor::default());
        log.write(LogSource::Stdout, b"hel");
        log.write(LogSource::Stdout, b"lo\nworld\npart");
        log.line(LogSource::Context, tracing::Level::INFO, "from context", 12);
        let big = vec![b'y'; 1000];
        for _ in 0..200 {
            log.write(LogSource::Stderr, &big);
            log.write(LogSource::Stderr, b"\n");
        }
        let (lines, dropped) = log.finish();
        assert_eq!(lines[0].message, "hello");
        assert_eq!(lines[1].message, "world");
        assert_eq!(lines[2].source, LogSource::Context);
        assert!(lines.iter().any(|l| l.message == "part"), "unterminated output is flushed");
        let kept: usize = lines.iter().map(|l| l.message.len()).sum();
        assert!(kept <= MAX_LOG_BYTES_PER_ITERATION);
        assert!(dropped > 0);
    }

    #[test]
    fn a_line_without_newline_is_cut_at_the_line_limit() {
        let log = IterationLog::new("job-1", "test", Redactor::default());
        log.write(LogSource::Stdout, &vec![b'z'; MAX_LOG_LINE_BYTES * 2 + 10]);
        let (lines, _) = log.finish();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.message.len() <= MAX_LOG_LINE_BYTES));
    }

    #[test]
    fn dropped_bytes_count_what_the_plugin_handed_over() {
        let log = IterationLog::new("job-1", "test", Redactor::default());
        // A 1 MiB line of which the host read only the first 4 KiB.
        log.line(LogSource::Context, tracing::Level::INFO, &"a".repeat(MAX_LOG_LINE_BYTES), 1 << 20);
        let (lines, dropped) = log.finish();
        assert_eq!(lines[0].message.len(), MAX_LOG_LINE_BYTES);
        assert_eq!(dropped, (1 << 20) - MAX_LOG_LINE_BYTES as u64);

        let log = IterationLog::new("job-1", "test", Redactor::default());
        for _ in 0..(MAX_LOG_BYTES_PER_ITERATION / MAX_LOG_LINE_BYTES) {
            log.line(LogSource::Context, tracing::Level::INFO, &"b".repeat(MAX_LOG_LINE_BYTES), MAX_LOG_LINE_BYTES);
        }
        log.line(LogSource::Context, tracing::Level::INFO, &"c".repeat(MAX_LOG_LINE_BYTES), 1 << 20);
        assert_eq!(log.finish().1, 1 << 20, "a whole dropped line counts in full");
    }

    #[test]
    fn secrets_are_redacted_in_every_source() {
        let log = IterationLog::new("job-1", "test", Redactor::new(vec!["hunter2-key".into()]));
        log.line(LogSource::Context, tracing::Level::INFO, "key is hunter2-key", 18);
        log.write(LogSource::Stdout, b"stdout hunter2-");
        log.write(LogSource::Stdout, b"key\nunterminated hunter2-key");
        let (lines, _) = log.finish();
        let messages: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(messages, ["key is [redacted]", "stdout [redacted]", "unterminated [redacted]"], "a secret split across writes too");
    }

    #[test]
    fn a_plugin_line_cannot_start_a_host_log_line() {
        let log = IterationLog::new("job-1", "test", Redactor::default());
        log.line(LogSource::Context, tracing::Level::INFO, "ok\nERROR kiln::serve: forged", 28);
        log.write(LogSource::Stdout, b"a\rb\x1b[31mred\n");
        let (lines, _) = log.finish();
        assert_eq!(lines[0].message, "ok\\nERROR kiln::serve: forged");
        assert_eq!(lines[1].message, "a\\rb\\u{1b}[31mred");
    }
}
