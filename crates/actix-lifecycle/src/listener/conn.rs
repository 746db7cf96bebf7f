//! What a protocol handler gets for each accepted connection.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix::{Message, Recipient};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::phase::ShutdownHandle;
use crate::registry::{ConnectionGuard, RefuseReason, Tracked};

/// An accepted stream: TCP or Unix-domain.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix-domain stream connection.
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The peer of an accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAddr {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A Unix-domain peer; usually unnamed (`None`).
    Unix(Option<PathBuf>),
}

impl PeerAddr {
    /// The IP address of a TCP peer (what admission limits count).
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        match self {
            PeerAddr::Tcp(a) => Some(a.ip()),
            PeerAddr::Unix(_) => None,
        }
    }
}

impl Stream {
    /// Sets `TCP_NODELAY` on a TCP connection (a Unix-domain stream has no
    /// such option: `Ok` without a system call).
    ///
    /// Turn it on for protocols whose one reply can take several writes,
    /// TLS above all: rustls writes a TLS 1.3 server's session tickets and
    /// the first application data (an SMTP or IMAP greeting) as separate
    /// records, and with Nagle's algorithm the second write waits for the
    /// peer's delayed ACK of the first, about 40 ms on Linux. A protocol
    /// that writes each reply whole in one write does not need it.
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nodelay(on),
            Stream::Unix(_) => Ok(()),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

/// Writes what fits of `bytes` to the socket `fd` without waiting (a fresh
/// socket's send buffer takes one short line whole), for a busy reply.
/// Errors are ignored: the connection is closed next either way.
///
/// One `send(MSG_DONTWAIT | MSG_NOSIGNAL)` on the descriptor, not tokio's
/// `try_write`: that one does not even try until the reactor has reported
/// the socket writable, and a refused connection is not registered with a
/// reactor at all.
pub(crate) fn write_now(fd: BorrowedFd<'_>, bytes: &[u8]) -> usize {
    // SAFETY: `fd` is an open socket borrowed for the call and `bytes` is a
    // valid buffer of `bytes.len()` bytes that send(2) only reads.
    let sent = unsafe {
        libc::send(
            fd.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(sent).unwrap_or(0)
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(a) => write!(f, "{a}"),
            PeerAddr::Unix(Some(p)) => write!(f, "unix:{}", p.display()),
            PeerAddr::Unix(None) => f.write_str("unix:(unnamed)"),
        }
    }
}

/// One accepted, registered connection, handed to the protocol handler.
///
/// `Conn` is itself the stream ([`AsyncRead`] + [`AsyncWrite`]): after an
/// abort, reads return end-of-file and writes fail, persistently. The
/// connection stays registered until the `Conn` (or the [`Tracked`] stream
/// taken from it) is dropped, which also closes the socket. Watch
/// [`shutdown`](Self::shutdown) to refuse new work while draining.
///
/// Fields are reached through methods on purpose: an `async move` block
/// that used only one public field would capture just that field and drop
/// the rest of the connection early.
///
/// ```
/// use actix_lifecycle::ConnHandler;
/// use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
///
/// // A line protocol that refuses new work while the service drains.
/// let smtp_like = ConnHandler::new(|conn| async move {
///     let shutdown = conn.shutdown().clone();
///     let peer = conn.peer().to_string();
///     let (reader, mut writer) = tokio::io::split(conn);
///     let _ = writer.write_all(format!("220 hello {peer}\r\n").as_bytes()).await;
///     let mut lines = BufReader::new(reader).lines();
///     while let Ok(Some(_command)) = lines.next_line().await {
///         let reply: &[u8] = if shutdown.is_draining() { b"421 shutting down\r\n" } else { b"250 ok\r\n" };
///         if writer.write_all(reply).await.is_err() || shutdown.is_draining() {
///             break;
///         }
///     }
/// });
/// # drop(smtp_like);
/// ```
#[derive(Debug)]
pub struct Conn {
    stream: Tracked<Stream>,
    peer: PeerAddr,
    context: Arc<ConnContext>,
}

/// What every connection of one listener on one arbiter shares: one `Arc`
/// cloned per connection, touched by that arbiter only.
#[derive(Debug)]
pub(crate) struct ConnContext {
    pub(crate) shutdown: ShutdownHandle,
    pub(crate) listener: Arc<str>,
    pub(crate) protocol: Arc<str>,
}

/// The parts of a [`Conn`], from [`Conn::into_parts`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ConnParts {
    /// The stream; it holds the registration.
    pub stream: Tracked<Stream>,
    /// Who connected.
    pub peer: PeerAddr,
    /// The service's shutdown phase.
    pub shutdown: ShutdownHandle,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The protocol label.
    pub protocol: Arc<str>,
}

impl Conn {
    pub(crate) fn new(stream: Tracked<Stream>, peer: PeerAddr, context: Arc<ConnContext>) -> Self {
        Conn {
            stream,
            peer,
            context,
        }
    }

    /// The connection id (also in the registry's snapshot and logs).
    pub fn id(&self) -> u64 {
        self.stream.id()
    }

    /// Who connected.
    pub fn peer(&self) -> &PeerAddr {
        &self.peer
    }

    /// The service's shutdown phase.
    pub fn shutdown(&self) -> &ShutdownHandle {
        &self.context.shutdown
    }

    /// The listener's name.
    pub fn listener(&self) -> &str {
        &self.context.listener
    }

    /// The protocol label.
    pub fn protocol(&self) -> &str {
        &self.context.protocol
    }

    /// True once the connection was aborted.
    pub fn is_aborted(&self) -> bool {
        self.stream.is_aborted()
    }

    /// The registration.
    pub fn guard(&self) -> &ConnectionGuard {
        self.stream.guard()
    }

    /// Sets `TCP_NODELAY` on a TCP connection; see [`Stream::set_nodelay`]
    /// for when a protocol needs it (TLS does).
    ///
    /// ```no_run
    /// # use actix_lifecycle::ConnHandler;
    /// let handler = ConnHandler::new(|conn| async move {
    ///     // Before the TLS handshake: the first reply after it must not
    ///     // wait for the client's delayed ACK.
    ///     let _ = conn.set_nodelay(true);
    ///     // ... the handshake and the session on `conn` ...
    /// });
    /// # drop(handler);
    /// ```
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.stream.get_ref().set_nodelay(on)
    }

    /// The tracked stream (for socket options and addresses via
    /// [`Tracked::get_ref`]).
    pub fn stream(&mut self) -> &mut Tracked<Stream> {
        &mut self.stream
    }

    /// Takes the connection apart; the stream keeps the registration.
    pub fn into_parts(self) -> ConnParts {
        ConnParts {
            stream: self.stream,
            peer: self.peer,
            shutdown: self.context.shutdown.clone(),
            listener: Arc::clone(&self.context.listener),
            protocol: Arc::clone(&self.context.protocol),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A connection sent to a [`Recipient`] handler.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Accepted(pub Conn);

/// Starts the handler's future for a connection on the current arbiter.
/// The spawn happens inside the closure, where the future's type is known,
/// so the future is stored in the task itself: no separate boxed future
/// per connection.
type HandlerFn = dyn Fn(Conn) + Send + Sync;

/// The protocol handler of a [`ListenerActor`](crate::ListenerActor): a
/// closure whose future is spawned on the arbiter serving the connection,
/// or a [`Recipient<Accepted>`].
///
/// ```
/// use actix_lifecycle::ConnHandler;
/// use tokio::io::AsyncWriteExt;
///
/// let hello = ConnHandler::new(|mut conn| async move {
///     let _ = conn.write_all(b"hello\r\n").await;
/// });
/// # drop(hello);
/// ```
#[derive(Clone)]
pub struct ConnHandler {
    inner: HandlerInner,
    refused: Option<Arc<RefusedFn>>,
}

/// The busy reply of a protocol for a refusal reason.
type RefusedFn = dyn Fn(RefuseReason) -> Vec<u8> + Send + Sync;

#[derive(Clone)]
enum HandlerInner {
    Func(Arc<HandlerFn>),
    Recipient(Recipient<Accepted>),
}

impl fmt::Debug for ConnHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            HandlerInner::Func(_) => f.write_str("ConnHandler(closure)"),
            HandlerInner::Recipient(_) => f.write_str("ConnHandler(recipient)"),
        }
    }
}

impl ConnHandler {
    /// A closure handler: `f(conn)` is spawned with `actix::spawn` on the
    /// arbiter serving the connection. Its future need not be `Send`.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn(Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        ConnHandler {
            inner: HandlerInner::Func(Arc::new(move |conn| {
                actix::spawn(f(conn));
            })),
            refused: None,
        }
    }

    /// A recipient handler: each connection is sent as [`Accepted`]
    /// (`do_send`, no round trip). Serve it on the same arbiter as the
    /// listener for the cheapest path.
    pub fn recipient(recipient: Recipient<Accepted>) -> Self {
        ConnHandler {
            inner: HandlerInner::Recipient(recipient),
            refused: None,
        }
    }

    /// The protocol's busy reply to a connection refused by admission
    /// control ([`Limits`](crate::Limits)) or for want of descriptors:
    /// `reply(reason)` gives one short line (empty: close without a word).
    /// The listener writes it with one non-blocking write — never waiting
    /// on the client — and closes the connection, which is never
    /// registered and never reaches the handler. Default: close silently.
    ///
    /// ```
    /// use actix_lifecycle::{ConnHandler, RefuseReason};
    ///
    /// let smtp = ConnHandler::new(|conn| async move { drop(conn) })
    ///     .on_refused(|reason| match reason {
    ///         RefuseReason::Rate => b"421 4.7.0 mx.example.org too many connections, slow down\r\n".to_vec(),
    ///         _ => b"421 4.7.0 mx.example.org too many connections, try again later\r\n".to_vec(),
    ///     });
    /// # drop(smtp);
    /// ```
    pub fn on_refused(
        mut self,
        reply: impl Fn(RefuseReason) -> Vec<u8> + Send + Sync + 'static,
    ) -> Self {
        self.refused = Some(Arc::new(reply));
        self
    }

    /// Answers a refused connection (a stream in a reactor or not) with
    /// the busy reply (if any), without waiting, and closes it. Returns the
    /// bytes written.
    pub(crate) fn refuse(&self, stream: impl AsFd, reason: RefuseReason) -> usize {
        let written = match &self.refused {
            Some(reply) => {
                let line = reply(reason);
                if line.is_empty() {
                    0
                } else {
                    write_now(stream.as_fd(), &line)
                }
            }
            None => 0,
        };
        drop(stream);
        written
    }

    /// Hands `conn` to the handler: spawns the closure's future on the
    /// current arbiter, or sends it to the recipient.
    pub(crate) fn dispatch(&self, conn: Conn) {
        match &self.inner {
            HandlerInner::Func(spawn) => spawn(conn),
            HandlerInner::Recipient(r) => r.do_send(Accepted(conn)),
        }
    }
}
