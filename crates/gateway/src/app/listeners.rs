//! Starting what serves the configured listeners: one `ListenerActor` per
//! SMTP or IMAP listener (plain or implicit TLS, each kind with its own
//! generic handler), the HTTP server on the HTTP listeners, and the drain
//! signal that tells an upgrade from a stop.

use std::future::Future;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use actix::Addr;
use actix_lifecycle::{Conn, ConnHandler, Lifecycle, ListenerActor, RefuseReason, ShutdownHandle};
use actix_web::dev::ServerHandle;
use lifecycle_handoff::{Network, PassedListener};
use slog::{error, info, o, warn, Logger};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{StartError, Upgrade};
use crate::busy;
use crate::config::{Config, ListenerConfig, Protocol, TlsMode};
use crate::http::{http_server, HttpAdmission, HttpListener, HttpState, Readiness};
use crate::imap::{serve_imap, ImapContext};
use crate::metrics::GatewayMetrics;
use crate::smtp::{serve_smtp, SmtpContext, SmtpTls};
use crate::spool::Spool;
use crate::tls::HANDSHAKE_TIMEOUT;
use crate::tls_stream::{TlsAcceptor, TlsStream};
use crate::upgrade::UpgradeDrain;

/// A protocol served on stream listeners: its context is what every
/// session of one listener shares, and a session runs on any stream (the
/// tracked connection, or the TLS stream over it).
pub(crate) trait StreamService: Send + Sync + 'static {
    /// The protocol's name in the registry, the metrics and the logs.
    const PROTOCOL: &'static str;

    /// Serves one session on `stream` (see [`serve_smtp`], [`serve_imap`]).
    fn serve<S>(
        stream: S,
        peer: String,
        shutdown: ShutdownHandle,
        ctx: Arc<Self>,
    ) -> impl Future<Output = ()>
    where
        S: AsyncRead + AsyncWrite + Unpin;

    /// The reply to a connection refused on a plain-text listener (see
    /// [`busy`]): it is written before any greeting.
    fn busy(config: &Config) -> impl Fn(RefuseReason) -> Vec<u8> + Send + Sync + 'static;
}

impl StreamService for SmtpContext {
    const PROTOCOL: &'static str = "smtp";

    async fn serve<S>(stream: S, peer: String, shutdown: ShutdownHandle, ctx: Arc<Self>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        serve_smtp(stream, peer, shutdown, ctx).await;
    }

    fn busy(config: &Config) -> impl Fn(RefuseReason) -> Vec<u8> + Send + Sync + 'static {
        let hostname = config.smtp().hostname().to_owned();
        move |reason| busy::smtp(&hostname, reason)
    }
}

impl StreamService for ImapContext {
    const PROTOCOL: &'static str = "imap";

    async fn serve<S>(stream: S, peer: String, shutdown: ShutdownHandle, ctx: Arc<Self>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        serve_imap(stream, peer, shutdown, ctx).await;
    }

    fn busy(_config: &Config) -> impl Fn(RefuseReason) -> Vec<u8> + Send + Sync + 'static {
        busy::imap
    }
}

/// What the sessions of every listener share.
pub(super) struct Sessions {
    /// Where SMTP sessions store what they accept.
    pub spool: Arc<Spool>,
    /// The `[tls]` acceptor, for the listeners with a `tls` option.
    pub tls: Option<TlsAcceptor>,
    /// The gateway's own metrics.
    pub metrics: GatewayMetrics,
    /// Tells the sessions an upgrade drain from a stop.
    pub drain: UpgradeDrain,
}

/// The SMTP and IMAP listeners started as [`start_stream`] does (by name),
/// and the HTTP listeners taken from the broker for [`start_http`].
pub(super) type Started = (Vec<(String, Addr<ListenerActor>)>, Vec<PassedListener>);

/// Starts a `ListenerActor` for every SMTP and IMAP listener of `config`,
/// each session context naming its listener in `log`, and takes the HTTP
/// listeners. A listener with `tls` but no `[tls]` loaded is an error.
pub(super) async fn start_streams(
    config: &Config,
    log: &Logger,
    lifecycle: &Lifecycle,
    sessions: &Sessions,
) -> Result<Started, StartError> {
    let mut actors: Vec<(String, Addr<ListenerActor>)> = Vec::new();
    let mut http = Vec::new();
    for l in config.listeners() {
        let name = l.name().to_owned();
        // The configuration checked that a listener with `tls` has [tls].
        let acceptor = match (l.tls(), &sessions.tls) {
            (None, _) => None,
            (Some(mode), Some(acceptor)) => Some((mode, acceptor.clone())),
            (Some(_), None) => {
                return Err(listener_error(&name, "uses TLS but no [tls] was loaded"))
            }
        };
        // One context per listener, so that every session's log lines name it.
        let log = log.new(o!("listener" => name.clone()));
        let actor = match l.protocol() {
            Protocol::Smtp => {
                let (smtp_tls, implicit) = match acceptor {
                    None => (SmtpTls::None, None),
                    Some((TlsMode::Starttls, a)) => (SmtpTls::Starttls(a), None),
                    Some((TlsMode::Implicit, a)) => (SmtpTls::Implicit, Some(a)),
                };
                let ctx =
                    SmtpContext::from_config(config.smtp(), sessions.spool.clone(), log.clone())
                        .metrics(sessions.metrics.clone())
                        .tls(smtp_tls)
                        .upgrade_drain(sessions.drain.clone());
                start_stream(lifecycle, config, l, Arc::new(ctx), implicit, log)
            }
            Protocol::Imap => {
                let ctx = ImapContext::from_config(config.imap(), log.clone())
                    .metrics(sessions.metrics.clone())
                    .upgrade_drain(sessions.drain.clone());
                let implicit = acceptor.map(|(_, a)| a);
                start_stream(lifecycle, config, l, Arc::new(ctx), implicit, log)
            }
            Protocol::Http => {
                http.push(lifecycle.take_listener(name, "http").await?);
                continue;
            }
        };
        actors.push((name, actor));
    }
    Ok((actors, http))
}

/// Starts the `ListenerActor` of the SMTP or IMAP `listener`, serving each
/// connection with `ctx`. With `implicit`, every connection starts with a
/// TLS handshake (SMTPS, IMAPS) and a refused one is closed without a word;
/// without, a refused one gets the protocol's busy reply. `log` names the
/// listener.
pub(super) fn start_stream<C: StreamService>(
    lifecycle: &Lifecycle,
    config: &Config,
    listener: &ListenerConfig,
    ctx: Arc<C>,
    implicit: Option<TlsAcceptor>,
    log: Logger,
) -> Addr<ListenerActor> {
    // One handler per kind of listener, so that the session futures of a
    // plain listener are not sized by the TLS variant, nor the other way.
    let handler = match implicit {
        None => plain_handler(ctx).on_refused(C::busy(config)),
        Some(acceptor) => tls_handler(ctx, acceptor, log).on_refused(|_| Vec::new()),
    };
    let mut builder = lifecycle
        .listener(listener.name().to_owned(), C::PROTOCOL, handler)
        .limits(config.listener_limits(listener));
    if let Some(proxy) = listener.proxy_protocol() {
        builder = builder.proxy_protocol(proxy);
    }
    builder.start()
}

/// `TCP_NODELAY` on a session's socket. rustls writes a TLS 1.3 server's
/// session tickets and the first reply after a handshake (the implicit-TLS
/// greeting, the EHLO reply after STARTTLS) as separate records; with
/// Nagle's algorithm the second waited for the client's delayed ACK, ~40 ms
/// on Linux, measured on every implicit-TLS greeting. The plain protocols
/// write each reply whole, so the option costs them nothing. A failure (the
/// peer already gone) is left to the session's first write.
fn nodelay(conn: &Conn) {
    let _ = conn.set_nodelay(true);
}

/// The connection handler of a plain stream listener: one session of `C`
/// per connection.
fn plain_handler<C: StreamService>(ctx: Arc<C>) -> ConnHandler {
    ConnHandler::new(move |conn| {
        // STARTTLS may follow (see `tls_handler`).
        nodelay(&conn);
        let peer = conn.peer().to_string();
        let shutdown = conn.shutdown().clone();
        C::serve(conn, peer, shutdown, ctx.clone())
    })
}

/// The connection handler of an implicit-TLS stream listener: a TLS
/// handshake, then one session of `C` on the TLS stream.
fn tls_handler<C: StreamService>(ctx: Arc<C>, acceptor: TlsAcceptor, log: Logger) -> ConnHandler {
    ConnHandler::new(move |conn| {
        nodelay(&conn);
        let shutdown = conn.shutdown().clone();
        let peer = conn.peer().to_string();
        tls_session(
            conn,
            peer,
            shutdown,
            ctx.clone(),
            acceptor.clone(),
            log.clone(),
        )
    })
}

/// An implicit-TLS session on `stream` (the tracked connection; generic for
/// the footprint test). The handshake runs in a boxed future of its own:
/// its state (the timer, rustls' handshake) is freed when it ends and does
/// not size the future the session keeps for its whole life, which holds
/// the TLS stream as a pointer ([`TlsAcceptor::accept`] boxes it).
pub(crate) fn tls_session<C, S>(
    stream: S,
    peer: String,
    shutdown: ShutdownHandle,
    ctx: Arc<C>,
    acceptor: TlsAcceptor,
    log: Logger,
) -> impl Future<Output = ()>
where
    C: StreamService,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = Box::pin(handshake(acceptor, stream, peer, log));
    async move {
        if let Some((tls, peer)) = handshake.await {
            C::serve(tls, peer, shutdown, ctx).await;
        }
    }
}

/// The server side of an implicit-TLS handshake on an accepted connection,
/// bounded by [`HANDSHAKE_TIMEOUT`]. The TLS stream wraps the tracked
/// connection, so the lifecycle's abort still ends it (its reads see end of
/// input). The stream and `peer` back, or `None` (logged) when the
/// handshake fails.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    acceptor: TlsAcceptor,
    stream: S,
    peer: String,
    log: Logger,
) -> Option<(Box<TlsStream<S>>, String)> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let version = tls
                .protocol_version()
                .map_or_else(|| "?".to_owned(), |v| format!("{v:?}"));
            info!(log, "tls started"; "peer" => &peer, "version" => version, "implicit" => true);
            Some((tls, peer))
        }
        Ok(Err(e)) => {
            info!(log, "tls handshake failed"; "peer" => &peer, "error" => %e);
            None
        }
        Err(_) => {
            info!(log, "tls handshake failed"; "peer" => &peer, "error" => "timed out");
            None
        }
    }
}

/// Starts the HTTP server (`/metrics`, `/healthz`, `/readyz`) on the HTTP
/// listeners taken from the broker; `None` when there are none.
pub(super) fn start_http(
    config: &Config,
    log: &Logger,
    lifecycle: &Lifecycle,
    listeners: Vec<PassedListener>,
    readiness: &Readiness,
) -> Result<Option<ServerHandle>, StartError> {
    if listeners.is_empty() {
        return Ok(None);
    }
    let state = HttpState::new(
        lifecycle.metrics().clone(),
        lifecycle.shutdown_handle(),
        readiness.clone(),
    );
    // Admitted under each listener's limits, not tracked (see `http`).
    let registry = lifecycle.connections().clone();
    let mut admission = HttpAdmission::new(registry.clone());
    let mut sockets = Vec::new();
    for passed in listeners {
        let name = passed.spec.name().to_owned();
        let kind = registry.kind("http", &name);
        if let Some(l) = config.listeners().iter().find(|l| l.name() == name) {
            registry.set_limits(&kind, Some(config.listener_limits(l)));
        }
        let socket = http_listener(passed);
        admission = admission
            .listener(&socket, kind)
            .map_err(StartError::Http)?;
        sockets.push(socket);
    }
    let server = http_server(
        state,
        sockets,
        Some(admission),
        config.shutdown().abort_grace(),
    )
    .map_err(StartError::Http)?;
    let handle = server.handle();
    let log = log.clone();
    actix::spawn(async move {
        if let Err(e) = server.await {
            error!(log, "http server failed"; "error" => %e);
        }
    });
    Ok(Some(handle))
}

fn http_listener(passed: PassedListener) -> HttpListener {
    match passed.spec.network() {
        Network::Tcp => HttpListener::Tcp(std::net::TcpListener::from(passed.fd)),
        Network::Unix => HttpListener::Unix(UnixListener::from(passed.fd)),
    }
}

/// What tells the sessions an upgrade drain from a stop: the ready channel
/// to a supervising parent, which closes when an upgrade took over. A
/// successor's channel to its predecessor closes once the predecessor saw
/// it ready, which means no upgrade; without a channel there is none.
pub(super) fn upgrade_drain(upgrade: &Upgrade, log: &Logger) -> UpgradeDrain {
    match &upgrade.ready {
        Some(channel) if upgrade.supervised => match channel.watch() {
            Ok(watch) => UpgradeDrain::new(watch),
            Err(e) => {
                warn!(log, "cannot watch the channel to the parent; an upgrade drain will be handled as a stop"; "error" => %e);
                UpgradeDrain::default()
            }
        },
        _ => UpgradeDrain::default(),
    }
}

fn listener_error(name: &str, reason: impl std::fmt::Display) -> StartError {
    StartError::Listener {
        listener: name.to_owned(),
        reason: reason.to_string(),
    }
}
