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
            let drain = slog_json::Json::new(io::stderr())
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
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(8192)
        .overflow_strategy(slog_async::OverflowStrategy::Block)
        .build_with_guard();
    let drain = LevelFilter::new(drain.fuse(), level).fuse();
    (
        Logger::root(drain, slog::o!("service" => "lifecycle-gateway")),
        LogGuard { _guard: guard },
    )
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

    #[test]
    fn explicit_format_wins_over_the_terminal_check() {
        assert_eq!(resolve_format(Some(LogFormat::Json)), LogFormat::Json);
        assert_eq!(resolve_format(Some(LogFormat::Term)), LogFormat::Term);
    }
}
