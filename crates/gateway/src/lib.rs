//! The reference gateway of actix-lifecycle: an SMTP sink with a durable
//! spool, a minimal IMAP greeting service and an HTTP endpoint for
//! `/metrics`, `/healthz` and `/readyz`, built only from the public APIs of
//! `lifecycle-handoff` and `actix-lifecycle`.
//!
//! The binary `lifecycle-gateway` wires these parts together; the library
//! exposes them so that tests (and other programs) can serve any stream:
//! every protocol handler is an `async fn` generic over
//! `AsyncRead + AsyncWrite`, watching a [`ShutdownHandle`](actix_lifecycle::ShutdownHandle).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod line;
mod metrics;
mod session;
mod smtp;
mod spool;

pub use config::{
    Config, ConfigError, ImapConfig, ListenerConfig, Located, LogConfig, LogFormat, LogLevel,
    Protocol, ShutdownConfig, SmtpConfig, TlsConfig, TlsMode,
};
pub use metrics::GatewayMetrics;
pub use session::{EndReason, SessionSummary};
pub use smtp::{serve_smtp, SmtpContext};
pub use spool::{Spool, SpoolError, StoredMessage, MESSAGE_EXT, TMP_DIR};
