//! The root logger: slog-term for people (the default when stderr is a
//! terminal), slog-json for machines, filtered by level, written to stderr
//! from a background thread that never drops a line.

use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;

use slog::{Drain, Level, LevelFilter, Logger};

use crate::config::{LogFormat, LogLevel};

/// Keeps the background log thread alive; dropping it flushes every
/// pending line. Hold it until the process exits.
#[must_use = "dropping the guard stops logging"]
pub struct LogGuard {
    _guard: slog_async::AsyncGuard,
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogGuard")
    }
}

/// The format used for `format`: `None` picks `term` when stderr is a
/// terminal and `json` otherwise.
pub fn resolve_format(format: Option<LogFormat>) -> LogFormat {
    format.unwrap_or_else(|| {
        if io::stderr().is_terminal() {
            LogFormat::Term
        } else {
            LogFormat::Json
        }
    })
}

/// Builds the process's root logger, writing to stderr.
pub fn stderr_logger(format: Option<LogFormat>, level: LogLevel) -> (Logger, LogGuard) {
    match resolve_format(format) {
        LogFormat::Term => {
            let decorator = slog_term::TermDecorator::new().stderr().build();
            let drain = slog_term::FullFormat::new(decorator).build().fuse();
            finish(drain, level.to_slog())
        }
        LogFormat::Json => {
            let drain = slog_json::Json::new(RecordWriter::new(io::stderr()))
                .add_default_keys()
                .build()
                .fuse();
            finish(drain, level.to_slog())
        }
    }
}

fn finish<D>(drain: D, level: Level) -> (Logger, LogGuard)
where
    D: Drain<Ok = (), Err = slog::Never> + Send + 'static,
{
    // The channel's slots are allocated and written when it is made, in
    // every process (parent, each generation): 8,192 of them cost a new
    // generation about 180 page faults and 1.1-1.3 ms of its start-up
    // (BENCHMARKS.md). 1,024 records of slack are plenty for a service
    // that logs connections at debug level only; past them a logging
    // thread waits (`Block`) rather than losing lines.
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(1024)
        .overflow_strategy(slog_async::OverflowStrategy::Block)
        .build_with_guard();
    let drain = LevelFilter::new(drain.fuse(), level).fuse();
    (
        Logger::root(drain, slog::o!("service" => "lifecycle-gateway")),
        LogGuard { _guard: guard },
    )
}

/// Writes each log record with one `write` call. slog-json writes a record
/// in pieces; when a privileged parent and its child share stderr (a pipe),
/// pieces of their records would interleave. A write of up to `PIPE_BUF`
/// (4096) bytes to a pipe is atomic, so whole lines stay whole.
struct RecordWriter<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> RecordWriter<W> {
    fn new(inner: W) -> Self {
        RecordWriter {
            inner,
            buf: Vec::with_capacity(1024),
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let result = self.inner.write_all(&self.buf);
            self.buf.clear();
            result?;
        }
        Ok(())
    }
}

impl<W: Write> Write for RecordWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.ends_with(b"\n") {
            self.emit()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.emit()?;
        self.inner.flush()
    }
}

/// A synchronous JSON logger writing to `writer` (for tests and tools).
pub fn json_logger<W: Write + Send + 'static>(writer: W, level: LogLevel) -> Logger {
    let drain = slog_json::Json::new(writer).add_default_keys().build();
    let drain = Mutex::new(drain).map(slog::Fuse);
    Logger::root(LevelFilter::new(drain, level.to_slog()).fuse(), slog::o!())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_with_level_filter() {
        let out = Shared::default();
        let log = json_logger(out.clone(), LogLevel::Info);
        slog::info!(log, "connection open"; "peer" => "127.0.0.1:1");
        slog::debug!(log, "hidden");
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].contains("\"msg\":\"connection open\""), "{text}");
        assert!(lines[0].contains("\"peer\":\"127.0.0.1:1\""), "{text}");
        assert!(lines[0].contains("\"level\":\"INFO\""), "{text}");
    }

    /// Records every `write` call it receives.
    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_record_is_one_write() {
        let calls = Calls::default();
        let piecewise = json_logger(calls.clone(), LogLevel::Info);
        slog::info!(piecewise, "unwrapped"; "k" => 1);
        let pieces = calls.0.lock().unwrap().len();
        assert!(pieces > 1, "slog-json writes a record in pieces ({pieces})");

        let calls = Calls::default();
        let log = json_logger(RecordWriter::new(calls.clone()), LogLevel::Info);
        for i in 0..3 {
            slog::info!(log, "line"; "i" => i);
        }
        let writes = calls.0.lock().unwrap().clone();
        assert_eq!(writes.len(), 3);
        for (i, w) in writes.iter().enumerate() {
            let text = String::from_utf8(w.clone()).unwrap();
            assert!(
                text.ends_with("}\n") && text.contains(&format!("\"i\":{i}")),
                "{text}"
            );
        }
    }

    #[test]
    fn explicit_format_wins_over_the_terminal_check() {
        assert_eq!(resolve_format(Some(LogFormat::Json)), LogFormat::Json);
        assert_eq!(resolve_format(Some(LogFormat::Term)), LogFormat::Term);
    }
}
