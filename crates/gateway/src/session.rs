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
