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

mod app;
pub mod busy;
mod cli;
mod config;
mod control;
mod ctl;
mod exit;
#[cfg(test)]
mod footprint;
mod handover;
mod http;
mod imap;
mod in_place;
mod line;
mod logging;
mod metrics;
mod notify;
mod parent;
mod session;
mod smtp;
mod spool;
mod tls;
mod tls_stream;
mod upgrade;
mod wire;

pub use app::{open_tls, run, serve, StartError, Upgrade};
pub use cli::{Cli, Command};
pub use config::{
    BareNewlines, Config, ConfigError, ImapConfig, LimitsConfig, ListenerConfig, Located,
    LogConfig, LogFormat, LogLevel, Protocol, ShutdownConfig, SmtpConfig, TlsConfig, TlsMode,
    DEFAULT_USER,
};
pub use ctl::{request, status_table, CtlAction, CtlArgs, CtlError, DEFAULT_CONTROL_SOCKET};
pub use exit::{EXIT_CONFIG, EXIT_CTL_FAILED, EXIT_CTL_UNREACHABLE};
pub use handover::Handover;
pub use http::{
    http_server, HttpAdmission, HttpListener, HttpState, Readiness, BUSY_RETRY_AFTER_SECS,
};
pub use imap::{serve_imap, ImapContext};
pub use in_place::{drop_in_place, DroppedInPlace};
pub use logging::{json_logger, resolve_format, stderr_logger, LogGuard};
pub use metrics::GatewayMetrics;
pub use notify::Notifications;
pub use parent::{service_user, supervise};
pub use session::{Cut, EndReason, SessionSummary};
pub use smtp::{serve_smtp, SmtpContext, SmtpTls};
pub use spool::{Spool, SpoolError, SpoolWriter, StoredMessage, MESSAGE_EXT, TMP_DIR};
pub use tls::{tls_server_config, TlsError, HANDSHAKE_TIMEOUT};
pub use tls_stream::{TlsAcceptor, TlsStream};
pub use upgrade::{UpgradeDrain, UpgradeMetrics};
