//! The SMTP sink (an RFC 5321 subset): greeting, EHLO/HELO, MAIL, RCPT,
//! DATA with dot-unstuffing, RSET, NOOP, VRFY, HELP, QUIT, pipelining
//! (RFC 2920), size and line limits, and the shutdown phases.
//!
//! Each accepted message is in the [`Spool`] before the client reads `250`.
//! While draining, a new session gets `421 4.3.2 shutting down`, an open
//! session gets 421 at its next command, and a DATA transfer in progress
//! completes (and is spooled and acknowledged). At `Aborting` the session
//! ends at once, storing nothing that was not complete.
//!
//! An upgrade drain (see [`UpgradeDrain`]) is gentler, because a successor
//! already accepts: a session is greeted normally and finishes one more
//! transaction (the one it is in, or its first since the drain began); only
//! its next `MAIL` gets `421`, which sends the client to the successor.

mod body;
mod command;
mod session;

use std::sync::Arc;
use std::time::Duration;

use actix_lifecycle::ShutdownHandle;
use slog::{info, o, Logger};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::{BareNewlines, SmtpConfig};
use crate::metrics::GatewayMetrics;
use crate::session::SessionSummary;
use crate::spool::Spool;
use crate::tls_stream::TlsAcceptor;
use crate::upgrade::UpgradeDrain;
use crate::wire::DataLimits;

/// How an SMTP listener uses TLS.
#[derive(Clone, Default)]
pub enum SmtpTls {
    /// No TLS: STARTTLS is not offered (default).
    #[default]
    None,
    /// Plain text first; `STARTTLS` (RFC 3207) upgrades with this acceptor.
    Starttls(TlsAcceptor),
    /// The stream the session gets is already TLS (SMTPS): STARTTLS is
    /// not offered and refused.
    Implicit,
}

impl std::fmt::Debug for SmtpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SmtpTls::None => "None",
            SmtpTls::Starttls(_) => "Starttls",
            SmtpTls::Implicit => "Implicit",
        })
    }
}

/// What every SMTP session of a listener shares: limits, the spool, the
/// logger and the metrics. Build it once, wrap it in an [`Arc`].
///
/// ```
/// use std::sync::Arc;
/// use lifecycle_gateway::{SmtpContext, Spool};
///
/// let dir = tempfile::tempdir()?;
/// let log = slog::Logger::root(slog::Discard, slog::o!());
/// let spool = Arc::new(Spool::open(dir.path(), &log)?);
/// let ctx = SmtpContext::new(spool, log)
///     .hostname("mx.example.org")
///     .max_message_size(1 << 20)
///     .max_recipients(10);
/// assert_eq!(ctx.max_message_size_limit(), 1 << 20);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct SmtpContext {
    hostname: String,
    max_message_size: usize,
    max_recipients: usize,
    idle_timeout: Duration,
    data_limits: DataLimits,
    max_session: Duration,
    bare_newlines: BareNewlines,
    spool: Arc<Spool>,
    logger: Logger,
    metrics: Option<GatewayMetrics>,
    tls: SmtpTls,
    upgrade_drain: UpgradeDrain,
}

impl SmtpContext {
    /// A context with the default limits: host name `localhost`, 10 MiB
    /// messages, 100 recipients, 5 minutes idle timeout, 10 minutes for a
    /// DATA transfer, at least 500 octets per second after 30 s of it, 1
    /// hour per session, bare line endings normalised.
    pub fn new(spool: Arc<Spool>, logger: Logger) -> Self {
        SmtpContext {
            hostname: "localhost".to_owned(),
            max_message_size: 10 * 1024 * 1024,
            max_recipients: 100,
            idle_timeout: Duration::from_secs(300),
            data_limits: DataLimits {
                deadline: Duration::from_secs(600),
                min_rate: 500,
                grace: Duration::from_secs(30),
            },
            max_session: Duration::from_secs(3600),
            bare_newlines: BareNewlines::Normalize,
            spool,
            logger,
            metrics: None,
            tls: SmtpTls::None,
            upgrade_drain: UpgradeDrain::default(),
        }
    }

    /// A context with the limits of an `[smtp]` config table.
    pub fn from_config(config: &SmtpConfig, spool: Arc<Spool>, logger: Logger) -> Self {
        Self::new(spool, logger)
            .hostname(config.hostname())
            .max_message_size(config.max_message_size())
            .max_recipients(config.max_recipients())
            .idle_timeout(config.idle_timeout())
            .data_deadline(config.data_deadline())
            .min_data_rate(config.min_data_rate(), config.min_data_rate_grace())
            .max_session(config.max_session())
            .bare_newlines(config.bare_newlines())
    }

    /// The name in the greeting and EHLO reply (default `localhost`).
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = hostname.into();
        self
    }

    /// Largest message accepted, in octets (default 10 MiB).
    pub fn max_message_size(mut self, octets: usize) -> Self {
        self.max_message_size = octets;
        self
    }

    /// Most recipients per message (default 100).
    pub fn max_recipients(mut self, n: usize) -> Self {
        self.max_recipients = n.max(1);
        self
    }

    /// How long a session waits for the client (default 5 minutes).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long a whole DATA transfer may take, `354` to the final dot
    /// (default 10 minutes); then `421 4.4.2` and nothing is stored.
    pub fn data_deadline(mut self, deadline: Duration) -> Self {
        self.data_limits.deadline = deadline;
        self
    }

    /// The minimum average rate of a DATA transfer in octets per second,
    /// checked from `grace` after `354` on (default 500 after 30 s; a rate
    /// of 0 turns the check off). A slower transfer gets `421 4.4.2` and
    /// nothing is stored.
    pub fn min_data_rate(mut self, octets_per_second: u64, grace: Duration) -> Self {
        self.data_limits.min_rate = octets_per_second;
        self.data_limits.grace = grace;
        self
    }

    /// The longest a session may last, however busy (default 1 hour); then
    /// `421 4.4.2` at its next wait for the client.
    pub fn max_session(mut self, max: Duration) -> Self {
        self.max_session = max;
        self
    }

    /// What a bare CR or LF in a message gets (default normalised to CRLF).
    pub fn bare_newlines(mut self, mode: BareNewlines) -> Self {
        self.bare_newlines = mode;
        self
    }

    /// Counts messages in these metrics (default: not counted).
    pub fn metrics(mut self, metrics: GatewayMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// How this listener uses TLS (default: not at all).
    pub fn tls(mut self, tls: SmtpTls) -> Self {
        self.tls = tls;
        self
    }

    /// Tells an upgrade drain from a stop (default: every drain is a stop).
    /// In an upgrade drain a session is not refused at its greeting and
    /// finishes one more transaction before `421`.
    pub fn upgrade_drain(mut self, drain: UpgradeDrain) -> Self {
        self.upgrade_drain = drain;
        self
    }

    /// The configured message size limit.
    pub fn max_message_size_limit(&self) -> usize {
        self.max_message_size
    }

    /// The spool messages go to.
    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }
}

/// Serves one SMTP session on `stream` until the client quits, the
/// connection fails, or the shutdown phase ends it. `peer` names the client
/// in logs; when it is an `IP:port` (the connection's peer, the real client
/// behind a PROXY protocol load balancer), each stored message's
/// `Received:` line names that address. Logs one line when the session opens and one when it closes.
pub async fn serve_smtp<S>(
    stream: S,
    peer: String,
    shutdown: ShutdownHandle,
    ctx: Arc<SmtpContext>,
) -> SessionSummary
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let client = peer.parse::<std::net::SocketAddr>().ok().map(|a| a.ip());
    let log = ctx.logger.new(o!("protocol" => "smtp", "peer" => peer));
    info!(log, "connection open");
    let mut session =
        session::Session::new(crate::tls::Upgradable::Plain(stream), shutdown, ctx, log);
    session.set_client(client);
    let reason = session.run().await;
    if let Some(label) = reason.cut_label() {
        info!(session.log, "session cut"; "reason" => label);
        if let Some(m) = &session.ctx().metrics {
            m.session_cut("smtp", label);
        }
    }
    info!(session.log, "connection closed"; "reason" => %reason, "messages" => session.messages);
    SessionSummary {
        reason,
        messages: session.messages,
    }
}

#[cfg(test)]
mod tests;
