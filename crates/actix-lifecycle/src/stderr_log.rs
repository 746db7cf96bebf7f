//! The logger a lifecycle uses when none is injected: errors (and worse)
//! go to standard error, one line each, written at once; everything else
//! is discarded. A service that fails must never fail silently.

use std::fmt::{self, Write as _};
use std::io::Write as _;

use slog::{Drain, Level, OwnedKVList, Record, KV};

/// Writes records at [`Level::Error`] and above to standard error as one
/// line: `actix-lifecycle: ERROR: message; key=value ...`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StderrErrors;

impl StderrErrors {
    /// The default logger of a [`Lifecycle`](crate::Lifecycle).
    pub(crate) fn logger() -> slog::Logger {
        slog::Logger::root(StderrErrors, slog::o!())
    }
}

struct Line(String);

impl slog::Serializer for Line {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for StderrErrors {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        if !record.level().is_at_least(Level::Error) {
            return Ok(());
        }
        let mut line = Line(format!(
            "actix-lifecycle: {}: {};",
            if record.level() == Level::Error {
                "ERROR"
            } else {
                "CRITICAL"
            },
            record.msg()
        ));
        let _ = record.kv().serialize(record, &mut line);
        let _ = values.serialize(record, &mut line);
        line.0.push('\n');
        // One write of the whole line: standard error is unbuffered.
        let _ = std::io::stderr().lock().write_all(line.0.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_message_and_keys_on_one_line() {
        let mut line = Line(String::from("x;"));
        slog::Serializer::emit_arguments(&mut line, "listener", &format_args!("mx")).unwrap();
        assert_eq!(line.0, "x; listener=mx");
    }
}
