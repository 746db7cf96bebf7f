//! Persistent abort: a per-connection flag that, once set, makes every read
//! of the wrapped stream return end-of-file and every write fail, forever.
//!
//! Abort never touches a descriptor: the registry does not know any fd
//! number, so a closed and reused fd of a newer connection cannot be hit.
//! The socket is closed when the [`Tracked`] stream that owns it is dropped.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::entry::Entry;
use super::shard::ConnectionGuard;

/// What a write or flush of an aborted connection answers.
fn aborted_error<T>() -> io::Result<T> {
    Err(io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection aborted by lifecycle shutdown",
    ))
}

/// Polls the stream with `poll` unless the connection is aborted, which
/// answers `aborted` instead. A pending poll registers the task on `waker`
/// (the entry's read or write waker, woken by the abort) and checks the
/// flag once more, so an abort that raced the poll is not missed.
fn unless_aborted<T>(
    entry: &Entry,
    waker: &AtomicWaker,
    cx: &mut Context<'_>,
    aborted: fn() -> io::Result<T>,
    poll: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    if entry.is_aborted() {
        return Poll::Ready(aborted());
    }
    match poll(cx) {
        Poll::Pending => {
            waker.register(cx.waker());
            if entry.is_aborted() {
                Poll::Ready(aborted())
            } else {
                Poll::Pending
            }
        }
        ready => ready,
    }
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

/// Beside [`Tracked`], which it makes (the guard's other methods are in
/// the shard module): the shard needs to know nothing of streams.
impl ConnectionGuard {
    /// Wraps the connection's stream so that an abort ends its I/O
    /// persistently; the stream then holds this guard (see [`Tracked`]).
    pub fn track<S>(self, stream: S) -> Tracked<S> {
        Tracked {
            inner: stream,
            guard: self,
        }
    }
}

impl<S> Tracked<S> {
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
        let Tracked { inner, guard } = self.get_mut();
        let entry = guard.entry();
        unless_aborted(
            entry,
            &entry.read_waker,
            cx,
            || Ok(()),
            |cx| Pin::new(inner).poll_read(cx, buf),
        )
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let Tracked { inner, guard } = self.get_mut();
        let entry = guard.entry();
        unless_aborted(entry, &entry.write_waker, cx, aborted_error, |cx| {
            Pin::new(inner).poll_write(cx, buf)
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Tracked { inner, guard } = self.get_mut();
        let entry = guard.entry();
        unless_aborted(entry, &entry.write_waker, cx, aborted_error, |cx| {
            Pin::new(inner).poll_flush(cx)
        })
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
