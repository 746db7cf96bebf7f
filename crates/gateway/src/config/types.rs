//! Small enumerations the configuration names.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The SMTP sink.
    Smtp,
    /// The IMAP greeting service.
    Imap,
    /// HTTP: `/metrics`, `/healthz`, `/readyz`.
    Http,
}

impl Protocol {
    /// The protocol's name in the config and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
            Protocol::Http => "http",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a listener uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS from the first byte (SMTPS on 465, IMAPS on 993).
    Implicit,
    /// Plain text, upgraded by the SMTP `STARTTLS` command.
    Starttls,
}

/// What the SMTP sink does with a bare LF or a bare CR (one not part of a
/// CRLF) in a message (`[smtp] bare_newlines`, Postfix 3.9's two answers).
/// Either way no bare LF or CR reaches the spool, so a relay that later
/// reads the spool cannot be smuggled a second message through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BareNewlines {
    /// Store such line endings as CRLF (default).
    #[default]
    Normalize,
    /// Reject the message with `550 5.5.2` after its final dot.
    Reject,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (slog-term).
    Term,
    /// One JSON object per line (slog-json).
    Json,
}

/// Least severe level that is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Only critical errors.
    Critical,
    /// Errors.
    Error,
    /// Warnings (`warn` is accepted too).
    #[serde(alias = "warn")]
    Warning,
    /// Normal operation (default).
    Info,
    /// Debugging detail.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The matching slog level.
    pub fn to_slog(self) -> slog::Level {
        match self {
            LogLevel::Critical => slog::Level::Critical,
            LogLevel::Error => slog::Level::Error,
            LogLevel::Warning => slog::Level::Warning,
            LogLevel::Info => slog::Level::Info,
            LogLevel::Debug => slog::Level::Debug,
            LogLevel::Trace => slog::Level::Trace,
        }
    }
}
