//! Persistent abort: a per-connection flag that, once set, makes every read
//! of the wrapped stream return end-of-file and every write fail, forever.
//!
//! Abort never touches a descriptor: the registry does not know any fd
//! number, so a closed and reused fd of a newer connection cannot be hit.
//! The socket is closed when the [`Tracked`] stream that owns it is dropped.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::shard::ConnectionGuard;

fn aborted_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection aborted by lifecycle shutdown",
    )
}

/// A connection stream tracked by the [`ConnectionRegistry`](crate::ConnectionRegistry).
///
/// It behaves as the stream it wraps until the connection is aborted
/// (registry [`Shutdown`](crate::Shutdown)-abort or [`Abort`](crate::Abort)).
/// From then on, persistently: every read returns end-of-file, every write
/// and flush fails with [`io::ErrorKind::ConnectionAborted`], and reads or
/// writes waiting for the socket are woken to see it. Dropping the wrapper
/// closes the socket.
///
/// It owns the connection's [`ConnectionGuard`]: the connection stays
/// registered exactly as long as its socket is open.
#[derive(Debug)]
pub struct Tracked<S> {
    inner: S,
    guard: ConnectionGuard,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, guard: ConnectionGuard) -> Self {
        Tracked { inner, guard }
    }

    /// The connection id.
    pub fn id(&self) -> u64 {
        self.guard.id()
    }

    /// True once the connection was aborted.
    pub fn is_aborted(&self) -> bool {
        self.guard.is_aborted()
    }

    /// The registration this stream holds.
    pub fn guard(&self) -> &ConnectionGuard {
        &self.guard
    }

    /// Takes the stream and the guard apart. I/O on the bare stream is no
    /// longer ended by an abort; the connection stays registered until the
    /// guard drops.
    pub fn into_parts(self) -> (S, ConnectionGuard) {
        (self.inner, self.guard)
    }

    /// The wrapped stream (for its addresses and socket options).
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, mutably. I/O done on it directly bypasses the
    /// abort check.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let abort = this.guard.entry();
        if abort.is_aborted() {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => {
                abort.read_waker.register(cx.waker());
                if abort.is_aborted() {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                }
            }
            ready => ready,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let abort = this.guard.entry();
        if abort.is_aborted() {
            return Poll::Ready(Err(aborted_error()));
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Pending => {
                abort.write_waker.register(cx.waker());
                if abort.is_aborted() {
                    Poll::Ready(Err(aborted_error()))
                } else {
                    Poll::Pending
                }
            }
            ready => ready,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let abort = this.guard.entry();
        if abort.is_aborted() {
            return Poll::Ready(Err(aborted_error()));
        }
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => {
                abort.write_waker.register(cx.waker());
                if abort.is_aborted() {
                    Poll::Ready(Err(aborted_error()))
                } else {
                    Poll::Pending
                }
            }
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.guard.is_aborted() {
            // Nothing more will be written; the socket closes on drop.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}
