//! A server TLS stream that holds no buffer while its client is silent.
//!
//! tokio-rustls wraps rustls' buffered `ServerConnection`, which keeps a
//! 4 KiB record buffer (its "deframer") for the connection's whole life
//! once the first record was read, and queues of plaintext and records
//! beside it. Ten thousand idle TLS clients cost 40 MiB for those buffers
//! alone. [`TlsStream`] runs rustls' unbuffered API
//! ([`UnbufferedServerConnection`]) instead, which leaves buffers to the
//! caller, and keeps one only while there is work:
//!
//! - input: a read waits for the socket holding no buffer; bytes arrive in
//!   a buffer borrowed from the thread's pool ([`poll_read_pooled`]), which
//!   goes back as soon as every record in it is processed. Only part of a
//!   record (or of a handshake message) is kept, bounded by
//!   [`MAX_INPUT`].
//! - decrypted data the reader had no room for, and encrypted records the
//!   socket did not take yet: kept until delivered or sent, then freed.
//!
//! What an idle connection keeps is rustls' own state: the record layer's
//! keys, the key schedule (TLS 1.3 keeps the traffic secrets for key
//! updates) and the connection's bookkeeping.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use actix_lifecycle::{poll_read_pooled, PooledBuf};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::{ProtocolVersion, ServerConfig, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most input kept while a record or handshake message is incomplete: a
/// 64 KiB handshake message (rustls' own limit) and one more record.
pub(crate) const MAX_INPUT: usize = 0xffff + 18 * 1024;

/// Largest plaintext encrypted per write (four full records).
const MAX_WRITE: usize = 64 * 1024;

/// Starts server TLS sessions with one configuration (cheap to clone).
///
/// ```
/// # async fn doc(config: std::sync::Arc<rustls::ServerConfig>, socket: tokio::net::TcpStream)
/// # -> std::io::Result<()> {
/// let acceptor = lifecycle_gateway::TlsAcceptor::from(config);
/// let tls = acceptor.accept(socket).await?; // bound the time with a timeout
/// # let _ = tls;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
}

impl From<Arc<ServerConfig>> for TlsAcceptor {
    fn from(config: Arc<ServerConfig>) -> Self {
        TlsAcceptor { config }
    }
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor").finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Runs the server handshake on `io`; the stream is returned once the
    /// handshake is complete. Not bounded in time: the caller adds a
    /// timeout ([`HANDSHAKE_TIMEOUT`](crate::HANDSHAKE_TIMEOUT)).
    ///
    /// The stream is boxed from the start (rustls' connection state is over
    /// 1 KiB): neither this future nor the session that holds the stream
    /// afterwards carries it inline, and it is never moved.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: S,
    ) -> io::Result<Box<TlsStream<S>>> {
        let conn = UnbufferedServerConnection::new(self.config.clone()).map_err(tls_error)?;
        let mut stream = Box::new(TlsStream {
            io,
            conn,
            input: Input::default(),
            out: Vec::new(),
            sent: 0,
            plain: Vec::new(),
            taken: 0,
            peer_closed: false,
            eof: false,
            close_queued: false,
        });
        poll_fn(|cx| stream.poll_handshake(cx)).await?;
        Ok(stream)
    }
}

/// A server TLS stream on `S` (see the module documentation).
pub struct TlsStream<S> {
    io: S,
    conn: UnbufferedServerConnection,
    input: Input,
    /// Records to send (`sent..`).
    out: Vec<u8>,
    sent: usize,
    /// Decrypted data not yet read (`taken..`).
    plain: Vec<u8>,
    taken: usize,
    /// The client sent close_notify.
    peer_closed: bool,
    /// The socket reached end of input.
    eof: bool,
    close_queued: bool,
}

impl<S> std::fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("input", &self.input.used)
            .field("out", &(self.out.len() - self.sent))
            .field("plain", &(self.plain.len() - self.taken))
            .finish_non_exhaustive()
    }
}

/// Where processing stopped.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// rustls needs more input (a handshake in progress).
    Input,
    /// Application data may be sent.
    Traffic,
    /// Both sides sent close_notify.
    Closed,
}

impl<S> TlsStream<S> {
    /// The negotiated protocol version.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// The negotiated cipher suite.
    pub fn negotiated_cipher_suite(&self) -> Option<SupportedCipherSuite> {
        self.conn.negotiated_cipher_suite()
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Whether a buffer is held (for tests: none while idle).
    #[cfg(test)]
    pub(crate) fn holds_buffers(&self) -> bool {
        self.input.used > 0 || !self.out.is_empty() || !self.plain.is_empty()
    }

    /// Processes every complete record of the input: decrypted data goes
    /// to `plain`, records to send to `out`. Encrypts `send` (returns how
    /// much of it) and queues close_notify when `close`, once the
    /// connection may send application data.
    fn process(&mut self, send: &[u8], close: bool) -> io::Result<(Next, usize)> {
        let TlsStream {
            conn,
            input,
            out,
            plain,
            taken,
            peer_closed,
            ..
        } = self;
        loop {
            let UnbufferedStatus { mut discard, state } =
                conn.process_tls_records(input.filled_mut());
            let state = state.map_err(tls_error)?;
            let next = match state {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        append_plain(plain, taken, record.payload);
                    }
                    None
                }
                ConnectionState::ReadEarlyData(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        append_plain(plain, taken, record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut data) => {
                    let mut guess = 1024;
                    loop {
                        let start = out.len();
                        out.resize(start + guess, 0);
                        match data.encode(&mut out[start..]) {
                            Ok(n) => {
                                out.truncate(start + n);
                                break;
                            }
                            Err(EncodeError::InsufficientSize(e)) => {
                                out.truncate(start);
                                guess = e.required_size;
                            }
                            Err(e) => {
                                out.truncate(start);
                                return Err(io::Error::other(e));
                            }
                        }
                    }
                    None
                }
                // What was encoded is in `out`, which this stream sends
                // before anything written later.
                ConnectionState::TransmitTlsData(data) => {
                    data.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    *peer_closed = true;
                    None
                }
                ConnectionState::Closed => Some((Next::Closed, 0)),
                ConnectionState::BlockedHandshake => Some((Next::Input, 0)),
                ConnectionState::WriteTraffic(mut traffic) => {
                    let n = if send.is_empty() {
                        0
                    } else {
                        encrypt(out, send, |data, buf| traffic.encrypt(data, buf))?
                    };
                    if close {
                        encrypt(out, &[], |_, buf| traffic.queue_close_notify(buf))?;
                    }
                    Some((Next::Traffic, n))
                }
                _ => return Err(io::Error::other("unexpected TLS connection state")),
            };
            input.discard(discard);
            if let Some(next) = next {
                return Ok(next);
            }
        }
    }
}

/// Appends decrypted data to the unread part of `plain`.
fn append_plain(plain: &mut Vec<u8>, taken: &mut usize, payload: &[u8]) {
    if *taken == plain.len() {
        plain.clear();
        *taken = 0;
    }
    plain.extend_from_slice(payload);
}

/// Encrypts into the end of `out`, growing it to what rustls asks for.
fn encrypt(
    out: &mut Vec<u8>,
    data: &[u8],
    mut f: impl FnMut(&[u8], &mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<usize> {
    // One record's overhead (header, tag, content type) per 16 KiB.
    let mut guess = data.len() + (data.len() / (16 * 1024) + 1) * 64;
    loop {
        let start = out.len();
        out.resize(start + guess, 0);
        match f(data, &mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(data.len());
            }
            Err(EncryptError::InsufficientSize(e)) => {
                out.truncate(start);
                guess = e.required_size;
            }
            Err(e) => {
                out.truncate(start);
                return Err(io::Error::other(e));
            }
        }
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let (next, _) = self.process(&[], false)?;
            ready!(self.poll_send(cx))?;
            if next == Next::Closed || self.peer_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection during the TLS handshake",
                )));
            }
            if next == Next::Traffic && !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if ready!(self.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection during the TLS handshake",
                )));
            }
        }
    }

    /// Sends the queued records; frees the queue once empty.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Reads more input from the socket: the number of bytes, 0 at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.input.used == 0 {
            let (buf, n) = ready!(poll_read_pooled(&mut self.io, cx))?;
            if n > 0 {
                self.input = Input {
                    buf: InputBuf::Pooled(buf),
                    used: n,
                };
            }
            return Poll::Ready(Ok(n));
        }
        let spare = self.input.spare()?;
        let mut read = ReadBuf::new(spare);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        let n = read.filled().len();
        self.input.used += n;
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.taken < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.taken);
                buf.put_slice(&this.plain[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.plain.len() {
                    this.plain = Vec::new();
                    this.taken = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection without a TLS close_notify",
                )));
            }
            // Records rustls queued while reading (a key update, session
            // tickets) leave now or with the next write.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if ready!(this.poll_fill(cx))? == 0 {
                this.eof = true;
                continue;
            }
            this.process(&[], false)?;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(this.poll_send(cx))?;
        let data = &data[..data.len().min(MAX_WRITE)];
        let n = match this.process(data, false)? {
            (Next::Traffic, n) => n,
            _ => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        };
        // The data is taken; its records leave now or at the next write
        // or flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            this.close_queued = true;
            this.process(&[], true)?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Received bytes not yet processed (`..used`); none held while empty.
#[derive(Default)]
struct Input {
    buf: InputBuf,
    used: usize,
}

#[derive(Default)]
enum InputBuf {
    #[default]
    None,
    /// The pooled buffer the first bytes arrived in.
    Pooled(PooledBuf),
    /// A larger buffer, for a record or handshake message that does not
    /// fit in a pooled one.
    Owned(Vec<u8>),
}

impl Input {
    fn bytes(&mut self) -> &mut [u8] {
        match &mut self.buf {
            InputBuf::None => &mut [],
            InputBuf::Pooled(b) => b,
            InputBuf::Owned(b) => b,
        }
    }

    fn filled_mut(&mut self) -> &mut [u8] {
        let used = self.used;
        &mut self.bytes()[..used]
    }

    /// Drops the first `n` bytes; the buffer goes back once empty.
    fn discard(&mut self, n: usize) {
        if n >= self.used {
            *self = Input::default();
        } else if n > 0 {
            let used = self.used;
            self.bytes().copy_within(n..used, 0);
            self.used -= n;
        }
    }

    /// Room after the used bytes, growing the buffer when full.
    fn spare(&mut self) -> io::Result<&mut [u8]> {
        let len = self.bytes().len();
        if self.used == len {
            if len >= MAX_INPUT {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a TLS record or handshake message larger than 82 KiB",
                ));
            }
            let used = self.used;
            let mut grown = vec![0; (len * 2).clamp(READ, MAX_INPUT)];
            grown[..used].copy_from_slice(&self.bytes()[..used]);
            self.buf = InputBuf::Owned(grown);
        }
        let used = self.used;
        Ok(&mut self.bytes()[used..])
    }
}

/// Size of the first input buffer when none is held.
const READ: usize = actix_lifecycle::READ_BUFFER;

#[cfg(test)]
mod tests;
