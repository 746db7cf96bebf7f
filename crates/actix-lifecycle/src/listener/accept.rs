//! The accept loop: adopting the socket into tokio, accepting with backoff,
//! registering and dispatching each connection.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::ArbiterHandle;
use futures_util::FutureExt;
use lifecycle_handoff::{validate_listener, ListenAddress, ListenerSpec, Network, PassedListener};
use slog::{debug, info, warn, Logger};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::mpsc;

use super::conn::{Conn, ConnContext, ConnHandler, PeerAddr, Stream};
use super::proxy::ProxyProtocol;
use crate::error::ListenerError;
use crate::phase::ShutdownHandle;
use crate::registry::{ConnKind, RefuseReason, RegistryShard};

/// First wait after a resource-exhaustion accept error (`EMFILE`, ...).
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest wait between accept attempts while resources stay exhausted.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A listening socket adopted into tokio.
pub(crate) enum Acceptor {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Acceptor {
    /// Checks the socket with [`validate_listener`] (a listening stream
    /// socket of the declared network, bound where declared), which also
    /// sets O_NONBLOCK — tokio needs it, and a hand-built inventory may be
    /// blocking — and registers it with the current arbiter's reactor.
    pub(crate) fn adopt(
        passed: PassedListener,
    ) -> Result<(Acceptor, ListenAddress), ListenerError> {
        let PassedListener { spec, fd } = passed;
        let found = check_listener(&fd, &spec)?;
        let adopted = match spec.network() {
            Network::Tcp => {
                TcpListener::from_std(std::net::TcpListener::from(fd)).map(Acceptor::Tcp)
            }
            Network::Unix => UnixListener::from_std(std::os::unix::net::UnixListener::from(fd))
                .map(Acceptor::Unix),
        };
        let acceptor = adopted.map_err(|source| ListenerError::Adopt {
            name: spec.name().to_owned(),
            source,
        })?;
        Ok((acceptor, found))
    }

    async fn accept(&self) -> io::Result<(Stream, PeerAddr)> {
        match self {
            Acceptor::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                Ok((Stream::Tcp(s), PeerAddr::Tcp(peer)))
            }
            Acceptor::Unix(l) => {
                let (s, peer) = l.accept().await?;
                Ok((
                    Stream::Unix(s),
                    PeerAddr::Unix(peer.as_pathname().map(|p| p.to_path_buf())),
                ))
            }
        }
    }
}

/// Checks a socket taken from the broker with [`validate_listener`]: a
/// listening stream socket of the declared network, bound where declared.
/// Returns the address it is bound to (a declared port 0 is the bound port).
pub(crate) fn check_listener(
    fd: &std::os::fd::OwnedFd,
    spec: &ListenerSpec,
) -> Result<ListenAddress, ListenerError> {
    use std::os::fd::AsFd;
    let entry = format!("inventory listener {:?}", spec.name());
    validate_listener(fd.as_fd(), spec, &entry).map_err(|source| ListenerError::Invalid {
        name: spec.name().to_owned(),
        source: Box::new(source),
    })
}

/// How an accept error is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// Out of descriptors or memory: back off.
    Exhausted,
    /// The connection died in the queue or a signal interrupted: retry.
    Transient,
    /// The listening socket itself is broken: stop.
    Fatal,
}

pub(crate) fn classify(e: &io::Error) -> ErrorClass {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => ErrorClass::Exhausted,
        Some(
            libc::ECONNABORTED
            | libc::EINTR
            | libc::EAGAIN
            | libc::EPROTO
            | libc::ECONNRESET
            | libc::EPERM
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH
            | libc::ETIMEDOUT,
        ) => ErrorClass::Transient,
        Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EFAULT) => ErrorClass::Fatal,
        // Unknown: back off rather than risk spinning.
        _ => ErrorClass::Exhausted,
    }
}

/// Counters shared by the actor and its accept loop (same arbiter).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: Cell<u64>,
    pub(crate) errors: Cell<u64>,
    burst: Cell<u64>,
}

impl Counters {
    /// Ends a burst of exhaustion errors, logging how long it was.
    pub(crate) fn end_burst(&self, log: &Logger) {
        let burst = self.burst.replace(0);
        if burst > 0 {
            info!(log, "accept errors over: accepting again"; "errors_in_burst" => burst);
        }
    }
}

/// What serving a connection on one arbiter needs; made once per arbiter.
pub(crate) struct Server {
    pub(crate) shard: RegistryShard,
    pub(crate) kind: ConnKind,
    pub(crate) handler: ConnHandler,
    pub(crate) context: Arc<ConnContext>,
    pub(crate) log: Logger,
    pub(crate) proxy: Option<Arc<ProxyProtocol>>,
}

impl Server {
    pub(crate) fn new(
        shard: RegistryShard,
        kind: ConnKind,
        handler: ConnHandler,
        shutdown: ShutdownHandle,
        log: Logger,
        proxy: Option<Arc<ProxyProtocol>>,
    ) -> Self {
        let context = Arc::new(ConnContext {
            shutdown,
            listener: Arc::clone(&kind.listener),
            protocol: Arc::clone(&kind.protocol),
        });
        Server {
            shard,
            kind,
            handler,
            context,
            log,
            proxy,
        }
    }

    /// Admits the connection on this arbiter's shard and hands it to the
    /// handler, or answers it busy and closes it.
    ///
    /// Admission uses the accepted peer's address, or with the PROXY
    /// protocol the client's address from the header, read first in a task
    /// of its own (see [`Server::serve_proxied`]).
    fn serve(&self, stream: Stream, peer: PeerAddr) {
        if let Some(proxy) = &self.proxy {
            if !proxy.is_trusted(&peer) {
                let reason = self.shard.refuse(&self.kind, RefuseReason::ProxyUntrusted);
                debug!(self.log, "connection refused"; "peer" => %peer, "reason" => reason.as_str());
                return;
            }
            actix::spawn(Self::serve_proxied(
                Arc::clone(proxy),
                self.admitter(),
                stream,
                peer,
            ));
            return;
        }
        self.admitter().admit(stream, peer, None);
    }

    /// What admitting and dispatching one connection needs, cloned for a
    /// connection that waits for its PROXY header.
    fn admitter(&self) -> Admitter {
        Admitter {
            shard: self.shard.clone(),
            kind: self.kind.clone(),
            handler: self.handler.clone(),
            context: Arc::clone(&self.context),
            log: self.log.clone(),
        }
    }

    /// Reads the PROXY header within its deadline (or until the service
    /// aborts), then admits the connection as the client it names.
    async fn serve_proxied(
        proxy: Arc<ProxyProtocol>,
        admitter: Admitter,
        mut stream: Stream,
        via: PeerAddr,
    ) {
        let read = tokio::time::timeout(proxy.header_deadline(), proxy.read_header(&mut stream));
        let outcome = tokio::select! {
            r = read => r.unwrap_or(Err(RefuseReason::ProxyTimeout)),
            () = admitter.context.shutdown.aborting() => {
                debug!(admitter.log, "connection closed before its PROXY header: the service is aborting"; "peer" => %via);
                return;
            }
        };
        match outcome {
            Ok(client) => {
                let peer = client.map_or_else(|| via.clone(), PeerAddr::Tcp);
                admitter.admit(stream, peer, Some(via));
            }
            Err(reason) => {
                admitter.shard.refuse(&admitter.kind, reason);
                debug!(admitter.log, "connection refused"; "peer" => %via, "reason" => reason.as_str());
            }
        }
    }
}

/// Admits one connection and hands it to the handler.
struct Admitter {
    shard: RegistryShard,
    kind: ConnKind,
    handler: ConnHandler,
    context: Arc<ConnContext>,
    log: Logger,
}

impl Admitter {
    /// Admits `stream` from `peer` (which came `via` a proxy, if any) and
    /// dispatches it, or answers it busy and closes it.
    fn admit(self, stream: Stream, peer: PeerAddr, via: Option<PeerAddr>) {
        let guard = match self.shard.admit(&self.kind, peer.ip()) {
            Ok(guard) => guard,
            Err(reason) => {
                let written = self.handler.refuse(stream, reason);
                debug!(self.log, "connection refused"; "peer" => %peer,
                    "reason" => reason.as_str(), "reply_bytes" => written);
                return;
            }
        };
        match &via {
            Some(via) => {
                debug!(self.log, "connection accepted"; "conn" => guard.id(), "peer" => %peer, "via" => %via)
            }
            None => debug!(self.log, "connection accepted"; "conn" => guard.id(), "peer" => %peer),
        }
        let conn = Conn::new(guard.track(stream), peer, self.context);
        self.handler.dispatch(conn);
    }
}

impl Server {
    /// Starts a task on `arbiter` that serves the connections sent to it.
    /// Returns `None` when the arbiter is gone.
    pub(crate) fn spawn_on(self, arbiter: &ArbiterHandle) -> Option<Remote> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(StdStream, PeerAddr)>();
        let started = arbiter.spawn(async move {
            while let Some((stream, peer)) = rx.recv().await {
                let stream = match stream {
                    StdStream::Tcp(s) => tokio::net::TcpStream::from_std(s).map(Stream::Tcp),
                    StdStream::Unix(s) => tokio::net::UnixStream::from_std(s).map(Stream::Unix),
                };
                match stream {
                    Ok(stream) => self.serve(stream, peer),
                    Err(e) => {
                        debug!(self.log, "cannot adopt a moved connection; dropped"; "error" => %e)
                    }
                }
            }
        });
        started.then_some(Remote(tx))
    }
}

/// The way to hand connections to a [`Server`] on another arbiter.
pub(crate) struct Remote(mpsc::UnboundedSender<(StdStream, PeerAddr)>);

/// The descriptor kept in reserve to answer clients when the process is
/// out of descriptors: `/dev/null`, opened close-on-exec.
pub(crate) fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

pub(crate) struct AcceptLoop {
    pub(crate) acceptor: Acceptor,
    /// One descriptor held back for [`AcceptLoop::answer_exhausted`].
    pub(crate) reserve: Option<std::fs::File>,
    pub(crate) local: Server,
    pub(crate) remote: Vec<Remote>,
    pub(crate) next_remote: usize,
    pub(crate) log: Logger,
    pub(crate) counters: Rc<Counters>,
}

impl AcceptLoop {
    /// Accepts until cancelled; returns only on a fatal error.
    pub(crate) async fn run(mut self) -> io::Result<()> {
        let mut delay = ACCEPT_BACKOFF_MIN;
        loop {
            match self.acceptor.accept().await {
                Ok((stream, peer)) => {
                    if self.counters.burst.get() > 0 {
                        self.counters.end_burst(&self.log);
                        delay = ACCEPT_BACKOFF_MIN;
                    }
                    self.counters.accepted.set(self.counters.accepted.get() + 1);
                    self.dispatch(stream, peer);
                }
                Err(e) => {
                    self.counters.errors.set(self.counters.errors.get() + 1);
                    match classify(&e) {
                        ErrorClass::Exhausted => {
                            let burst = self.counters.burst.get() + 1;
                            self.counters.burst.set(burst);
                            if burst == 1 {
                                warn!(self.log, "accept failed: out of resources; answering waiting clients busy, backing off";
                                    "error" => %e, "backoff_ms" => delay.as_millis() as u64);
                            }
                            if self.answer_exhausted(&e) {
                                // One waiting client was answered, or none
                                // waits (the next accept waits for one):
                                // either way no spin, no need to sleep.
                                continue;
                            }
                            actix_rt::time::sleep(delay).await;
                            delay = (delay * 2).min(ACCEPT_BACKOFF_MAX);
                        }
                        ErrorClass::Transient => {
                            debug!(self.log, "accept failed transiently; retrying"; "error" => %e);
                            tokio::task::yield_now().await;
                        }
                        ErrorClass::Fatal => return Err(e),
                    }
                }
            }
        }
    }

    /// Out of descriptors (`EMFILE`/`ENFILE`): frees the reserve
    /// descriptor, accepts the waiting connection with it, answers it busy
    /// ([`RefuseReason::Descriptors`]), closes it and takes the reserve
    /// again. True when that made progress: a client was answered, or no
    /// client was waiting (the accept then waits for readiness). False
    /// when there is no reserve (it could not be re-opened) or the accept
    /// failed again: the caller backs off.
    fn answer_exhausted(&mut self, e: &io::Error) -> bool {
        if !matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            return false;
        }
        let Some(reserve) = self.reserve.take() else {
            self.reserve = open_reserve();
            return false;
        };
        drop(reserve);
        let accepted = self.acceptor.accept().now_or_never();
        let progress = match accepted {
            Some(Ok((stream, peer))) => {
                self.counters.accepted.set(self.counters.accepted.get() + 1);
                let reason = self
                    .local
                    .shard
                    .refuse(&self.local.kind, RefuseReason::Descriptors);
                let written = self.local.handler.refuse(stream, reason);
                debug!(self.log, "connection refused"; "peer" => %peer,
                    "reason" => reason.as_str(), "reply_bytes" => written);
                true
            }
            // Nobody waits: the listener's readiness is now cleared.
            None => true,
            Some(Err(_)) => false,
        };
        // The answered connection is closed by now: its descriptor is free.
        self.reserve = open_reserve();
        progress
    }

    fn dispatch(&mut self, stream: Stream, peer: PeerAddr) {
        if self.remote.is_empty() {
            self.local.serve(stream, peer);
            return;
        }
        let i = self.next_remote % self.remote.len();
        self.next_remote = i + 1;
        // Leave this arbiter's reactor; the target registers it with its own.
        let std_stream = match stream {
            Stream::Tcp(s) => s.into_std().map(StdStream::Tcp),
            Stream::Unix(s) => s.into_std().map(StdStream::Unix),
        };
        match std_stream {
            Ok(s) => {
                if self.remote[i].0.send((s, peer)).is_err() {
                    warn!(
                        self.log,
                        "an arbiter serving this listener is gone; connection dropped"
                    );
                }
            }
            Err(e) => {
                debug!(self.log, "cannot move a connection to its arbiter; dropped";
                    "peer" => %peer, "error" => %e);
            }
        }
    }
}

/// A connection on its way to another arbiter, out of any reactor.
pub(crate) enum StdStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(classify(&e(libc::EMFILE)), ErrorClass::Exhausted);
        assert_eq!(classify(&e(libc::ENFILE)), ErrorClass::Exhausted);
        assert_eq!(classify(&e(libc::ENOBUFS)), ErrorClass::Exhausted);
        assert_eq!(classify(&e(libc::ENOMEM)), ErrorClass::Exhausted);
        assert_eq!(classify(&e(libc::ECONNABORTED)), ErrorClass::Transient);
        assert_eq!(classify(&e(libc::EINTR)), ErrorClass::Transient);
        assert_eq!(classify(&e(libc::EBADF)), ErrorClass::Fatal);
        assert_eq!(classify(&e(libc::EINVAL)), ErrorClass::Fatal);
        assert_eq!(
            classify(&io::Error::other("no errno")),
            ErrorClass::Exhausted,
            "unknown errors back off instead of spinning"
        );
    }
}
