//! The accept loop: adopting the socket into tokio, accepting with backoff,
//! registering and dispatching each connection.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::ArbiterHandle;
use futures_util::FutureExt;
use lifecycle_handoff::{validate_listener, ListenAddress, ListenerSpec, Network, PassedListener};
use slog::{debug, info, warn, Logger};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

use super::conn::{Conn, ConnContext, ConnHandler, PeerAddr, Stream};
use super::proxy::ProxyProtocol;
use crate::error::ListenerError;
use crate::phase::ShutdownHandle;
use crate::registry::{ConnKind, ConnectionGuard, RefuseReason, RegistryShard};

/// First wait after a resource-exhaustion accept error (`EMFILE`, ...).
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest wait between accept attempts while resources stay exhausted.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A listening socket in the current arbiter's reactor.
///
/// It accepts with mio (`accept4` with `SOCK_NONBLOCK | SOCK_CLOEXEC`), so
/// an accepted connection is in no reactor yet: one served here is
/// registered with this arbiter's reactor once, one served on another
/// arbiter with that arbiter's once — not registered here, deregistered
/// and registered again there (two `epoll_ctl` calls and a reactor slot
/// saved per connection, as actix-server's accept thread does).
pub(crate) enum Acceptor {
    Tcp(AsyncFd<mio::net::TcpListener>),
    Unix(AsyncFd<mio::net::UnixListener>),
}

impl Acceptor {
    /// Checks the socket with [`validate_listener`] (a listening stream
    /// socket of the declared network, bound where declared), which also
    /// sets O_NONBLOCK — the reactor needs it, and a hand-built inventory
    /// may be blocking — and registers it with the current arbiter's
    /// reactor.
    pub(crate) fn adopt(
        passed: PassedListener,
    ) -> Result<(Acceptor, ListenAddress), ListenerError> {
        let PassedListener { spec, fd } = passed;
        let found = check_listener(&fd, &spec)?;
        let adopted = match spec.network() {
            Network::Tcp => register(mio::net::TcpListener::from_std(
                std::net::TcpListener::from(fd),
            ))
            .map(Acceptor::Tcp),
            Network::Unix => register(mio::net::UnixListener::from_std(
                std::os::unix::net::UnixListener::from(fd),
            ))
            .map(Acceptor::Unix),
        };
        let acceptor = adopted.map_err(|source| ListenerError::Adopt {
            name: spec.name().to_owned(),
            source,
        })?;
        Ok((acceptor, found))
    }

    /// The next connection, in no reactor yet.
    async fn accept(&self) -> io::Result<(StdStream, PeerAddr)> {
        match self {
            Acceptor::Tcp(l) => {
                let (s, peer) = l.async_io(Interest::READABLE, |l| l.accept()).await?;
                Ok((StdStream::Tcp(s.into()), PeerAddr::Tcp(peer)))
            }
            Acceptor::Unix(l) => {
                let (s, peer) = l.async_io(Interest::READABLE, |l| l.accept()).await?;
                Ok((
                    StdStream::Unix(s.into()),
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

/// Registers a listening socket with the current arbiter's reactor, for
/// readability.
fn register<L: std::os::fd::AsRawFd>(listener: L) -> io::Result<AsyncFd<L>> {
    // SAFETY: `listener` is a mio listener that owns its descriptor (an
    // `OwnedFd` inside, taken from the hand-off's `OwnedFd`): it stays open
    // and `as_raw_fd` returns the same descriptor until the `AsyncFd`,
    // which owns the listener, is dropped.
    unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
        .map_err(io::Error::from)
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
    /// Admits and dispatches this arbiter's connections; borrowed for a
    /// connection admitted at once, cloned only for one that first waits
    /// for its PROXY header.
    pub(crate) admitter: Admitter,
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
            admitter: Admitter {
                shard,
                kind,
                handler,
                context,
                log,
            },
            proxy,
        }
    }

    /// Serves an adopted connection behind a PROXY-protocol listener: a
    /// peer that is not a trusted proxy is refused; the header is read in
    /// a task of its own (see [`Server::serve_proxied`]) and admission
    /// uses the client's address from it.
    fn serve_proxy(&self, proxy: &Arc<ProxyProtocol>, stream: Stream, peer: PeerAddr) {
        let a = &self.admitter;
        if !proxy.is_trusted(&peer) {
            let reason = a.shard.refuse(&a.kind, RefuseReason::ProxyUntrusted);
            debug!(a.log, "connection refused"; "peer" => %peer, "reason" => reason.as_str());
            return;
        }
        actix::spawn(Self::serve_proxied(
            Arc::clone(proxy),
            self.admitter.clone(),
            stream,
            peer,
        ));
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

/// What admitting and dispatching one connection needs.
#[derive(Clone)]
pub(crate) struct Admitter {
    shard: RegistryShard,
    kind: ConnKind,
    handler: ConnHandler,
    context: Arc<ConnContext>,
    log: Logger,
}

impl Admitter {
    /// Admits `stream` from `peer` (which came `via` a proxy, if any) and
    /// dispatches it, or answers it busy and closes it.
    fn admit(&self, stream: Stream, peer: PeerAddr, via: Option<PeerAddr>) {
        match self.shard.admit(&self.kind, peer.ip()) {
            Ok(guard) => self.dispatch(guard, stream, peer, via),
            Err(reason) => self.refused(stream, &peer, reason),
        }
    }

    /// [`admit`](Self::admit) for a connection in no reactor yet: it is
    /// registered with this arbiter's only once admitted, so a refused one
    /// costs no `epoll_ctl` and no reactor slot (a flood is answered with
    /// `accept4`, `send` and `close` per connection).
    fn admit_std(&self, stream: StdStream, peer: PeerAddr) {
        let guard = match self.shard.admit(&self.kind, peer.ip()) {
            Ok(guard) => guard,
            Err(reason) => return self.refused(stream, &peer, reason),
        };
        match stream.adopt() {
            Ok(stream) => self.dispatch(guard, stream, peer, None),
            // The guard's drop unregisters it.
            Err(e) => debug!(self.log, "cannot register an accepted connection; closed";
                "conn" => guard.id(), "peer" => %peer, "error" => %e),
        }
    }

    /// Answers a connection refused for `reason` busy and closes it.
    fn refused(&self, stream: impl AsFd, peer: &PeerAddr, reason: RefuseReason) {
        let written = self.handler.refuse(stream, reason);
        debug!(self.log, "connection refused"; "peer" => %peer,
            "reason" => reason.as_str(), "reply_bytes" => written);
    }

    /// Hands an admitted connection to the handler.
    fn dispatch(
        &self,
        guard: ConnectionGuard,
        stream: Stream,
        peer: PeerAddr,
        via: Option<PeerAddr>,
    ) {
        match &via {
            Some(via) => {
                debug!(self.log, "connection accepted"; "conn" => guard.id(), "peer" => %peer, "via" => %via)
            }
            None => debug!(self.log, "connection accepted"; "conn" => guard.id(), "peer" => %peer),
        }
        let conn = Conn::new(guard.track(stream), peer, Arc::clone(&self.context));
        self.handler.dispatch(conn);
    }
}

impl Server {
    /// Serves an accepted connection: admitted (and only then registered
    /// with this arbiter's reactor) or refused; behind a PROXY-protocol
    /// listener registered first, to read the header.
    fn serve_std(&self, stream: StdStream, peer: PeerAddr) {
        let Some(proxy) = &self.proxy else {
            self.admitter.admit_std(stream, peer);
            return;
        };
        match stream.adopt() {
            Ok(stream) => self.serve_proxy(proxy, stream, peer),
            Err(e) => {
                debug!(self.admitter.log, "cannot register an accepted connection; dropped";
                    "peer" => %peer, "error" => %e)
            }
        }
    }

    /// Starts a task on `arbiter` that serves the connections sent to it.
    /// Returns `None` when the arbiter is gone.
    pub(crate) fn spawn_on(self, arbiter: &ArbiterHandle) -> Option<Remote> {
        let (tx, mut rx) = mpsc::unbounded_channel::<(StdStream, PeerAddr)>();
        let started = arbiter.spawn(async move {
            while let Some((stream, peer)) = rx.recv().await {
                self.serve_std(stream, peer);
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
                        self.restore_reserve();
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
                let local = &self.local.admitter;
                let reason = local.shard.refuse(&local.kind, RefuseReason::Descriptors);
                // Answered on the bare socket: a connection closed at once
                // needs no reactor registration.
                local.refused(stream, &peer, reason);
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

    /// Takes the reserve descriptor again if a burst of exhaustion lost
    /// it: another thread (or, at `ENFILE`, another process) can take the
    /// slot it freed before it is re-opened. Tried as each burst ends, when
    /// accepts succeed again, so it is not lost for good.
    fn restore_reserve(&mut self) {
        if self.reserve.is_none() {
            self.reserve = open_reserve();
            match self.reserve {
                Some(_) => info!(self.log, "reserve descriptor taken again"),
                None => warn!(
                    self.log,
                    "reserve descriptor still cannot be opened; \
                    at the next exhaustion waiting clients wait for the backoff"
                ),
            }
        }
    }

    /// Serves the connection on the next arbiter in turn. An arbiter found
    /// gone leaves the rotation and the connection goes to the next one;
    /// with none left, it is served here.
    fn dispatch(&mut self, stream: StdStream, peer: PeerAddr) {
        let mut conn = (stream, peer);
        while !self.remote.is_empty() {
            let i = self.next_remote % self.remote.len();
            self.next_remote = i + 1;
            // In no reactor yet: the target arbiter registers it with its own.
            match self.remote[i].0.send(conn) {
                Ok(()) => return,
                Err(tokio::sync::mpsc::error::SendError(back)) => {
                    conn = back;
                    self.remote.remove(i);
                    // Slot `i` now holds the next arbiter: it is next.
                    self.next_remote = i;
                    warn!(self.log, "an arbiter serving this listener is gone; it gets no more connections";
                        "arbiters_left" => self.remote.len());
                }
            }
        }
        let (stream, peer) = conn;
        self.local.serve_std(stream, peer);
    }
}

/// An accepted connection in no reactor yet (non-blocking, close-on-exec),
/// on its way to the arbiter that serves it.
pub(crate) enum StdStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl AsFd for StdStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            StdStream::Tcp(s) => s.as_fd(),
            StdStream::Unix(s) => s.as_fd(),
        }
    }
}

impl StdStream {
    /// Registers the connection with the current arbiter's reactor.
    fn adopt(self) -> io::Result<Stream> {
        match self {
            StdStream::Tcp(s) => tokio::net::TcpStream::from_std(s).map(Stream::Tcp),
            StdStream::Unix(s) => tokio::net::UnixStream::from_std(s).map(Stream::Unix),
        }
    }
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
