//! How a protocol session ended: returned by every `serve_*` function and
//! logged on the connection's close line.

use std::fmt;
use std::io;

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The client said goodbye (SMTP QUIT, IMAP LOGOUT).
    Quit,
    /// The client closed the connection.
    ClientClosed,
    /// The client was silent for longer than the idle timeout.
    IdleTimeout,
    /// The service is aborting connections (shutdown phase `Aborting`).
    Aborted,
    /// The service is draining: the client got 421 / BYE.
    Draining,
    /// The client made too many errors.
    TooManyErrors,
    /// Reading or writing failed.
    Io(io::ErrorKind),
    /// The TLS handshake failed or timed out.
    Tls(String),
    /// Commands followed STARTTLS in the same read: refused, as they could
    /// have been injected into the plain-text part (CVE-2011-0411).
    PipelinedStarttls,
    /// The client announced a literal larger than the server reads and
    /// throws away (IMAP).
    LiteralTooLarge,
    /// A deadline ended the session although the client was still there.
    Cut(Cut),
}

/// A deadline that ends a session however busy the client keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cut {
    /// A DATA transfer took longer than the DATA deadline.
    DataDeadline,
    /// A DATA transfer's average rate fell below the minimum after the grace.
    MinDataRate,
    /// The session outlived the maximum session lifetime.
    MaxSession,
}

impl Cut {
    /// The name in logs and in the `reason` label of
    /// `<prefix>_sessions_cut_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Cut::DataDeadline => "data_deadline",
            Cut::MinDataRate => "min_data_rate",
            Cut::MaxSession => "max_session",
        }
    }
}

impl EndReason {
    /// For an end forced by a timer (the idle timeout or a [`Cut`]), the
    /// `reason` label it is counted under in `<prefix>_sessions_cut_total`.
    pub fn cut_label(&self) -> Option<&'static str> {
        match self {
            EndReason::IdleTimeout => Some("idle_timeout"),
            EndReason::Cut(cut) => Some(cut.as_str()),
            _ => None,
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Quit => f.write_str("quit"),
            EndReason::ClientClosed => f.write_str("client closed"),
            EndReason::IdleTimeout => f.write_str("idle timeout"),
            EndReason::Aborted => f.write_str("aborted"),
            EndReason::Draining => f.write_str("draining"),
            EndReason::TooManyErrors => f.write_str("too many errors"),
            EndReason::Io(kind) => write!(f, "i/o error: {kind}"),
            EndReason::Tls(why) => write!(f, "tls handshake failed: {why}"),
            EndReason::PipelinedStarttls => f.write_str("commands pipelined after STARTTLS"),
            EndReason::LiteralTooLarge => f.write_str("literal too large"),
            EndReason::Cut(Cut::DataDeadline) => f.write_str("data deadline exceeded"),
            EndReason::Cut(Cut::MinDataRate) => f.write_str("data rate below the minimum"),
            EndReason::Cut(Cut::MaxSession) => f.write_str("session lifetime exceeded"),
        }
    }
}

/// The outcome of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// Why it ended.
    pub reason: EndReason,
    /// Messages accepted (SMTP) during the session.
    pub messages: u32,
}
