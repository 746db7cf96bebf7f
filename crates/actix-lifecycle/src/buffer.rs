//! Read buffers that exist only while there is input.
//!
//! A session that owns an 8 KiB read buffer for its whole life pays 8 KiB
//! per idle connection; ten thousand idle clients cost 80 MiB for
//! nothing. [`read_pooled`] instead waits for input holding no buffer at
//! all: at each poll it borrows a buffer from a small pool of the current
//! thread (one per arbiter), reads into it, and gives it back at once when
//! the stream has nothing ([`Poll::Pending`]). Only a read that returns
//! bytes keeps its [`PooledBuf`]; drop it (or call
//! [`PooledBuf::release`]) when the input is consumed and the session
//! waits again, and the next connection of the thread reuses it.
//!
//! It works on any [`AsyncRead`] (a [`Tracked`](crate::Tracked) stream, a
//! TLS stream), as a readiness wait would, without a readiness API on the
//! stream: a non-ready read returns before touching the buffer.
//!
//! ```
//! use actix_lifecycle::{read_pooled, READ_BUFFER};
//! use tokio::io::AsyncWriteExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let (mut client, mut server) = tokio::io::duplex(64);
//! client.write_all(b"EHLO client\r\n").await?;
//! // While the client is silent this holds no buffer.
//! let (buf, n) = read_pooled(&mut server).await?;
//! assert_eq!(&buf[..n], b"EHLO client\r\n");
//! assert_eq!(buf.len(), READ_BUFFER);
//! drop(buf); // back to this thread's pool
//! # Ok(())
//! # }
//! ```

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Size of a pooled read buffer (8 KiB).
pub const READ_BUFFER: usize = 8 * 1024;

/// Buffers kept per thread for reuse; more are freed when given back.
const POOL_MAX: usize = 32;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A [`READ_BUFFER`]-byte buffer borrowed from the current thread's pool;
/// dropping it gives it back (or frees it when the pool is full).
#[derive(Debug)]
pub struct PooledBuf {
    buf: Box<[u8]>,
}

impl PooledBuf {
    /// A buffer from this thread's pool, or a new one when it is empty.
    pub fn take() -> Self {
        let reused = POOL.try_with(|pool| pool.borrow_mut().pop()).ok().flatten();
        PooledBuf {
            buf: reused.unwrap_or_else(|| vec![0; READ_BUFFER].into_boxed_slice()),
        }
    }

    /// Gives the buffer back to the pool (the same as dropping it).
    pub fn release(self) {}
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.is_empty() {
            return;
        }
        // A thread being torn down has no pool left: the buffer is freed.
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOL_MAX {
                pool.push(buf);
            }
        });
    }
}

impl Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

/// Reads from `io` into a buffer borrowed only for a read that returns
/// bytes (see [`PooledBuf`]): the buffer and how many
/// bytes were read, 0 at end of input.
///
/// Cancel safe: a future dropped while waiting holds no buffer and lost
/// no input.
pub async fn read_pooled<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
) -> io::Result<(PooledBuf, usize)> {
    poll_fn(|cx| poll_read_pooled(io, cx)).await
}

/// The poll function of [`read_pooled`], for hand-written futures.
pub fn poll_read_pooled<R: AsyncRead + Unpin + ?Sized>(
    io: &mut R,
    cx: &mut Context<'_>,
) -> Poll<io::Result<(PooledBuf, usize)>> {
    let mut buf = PooledBuf::take();
    let mut read = ReadBuf::new(&mut buf);
    match Pin::new(io).poll_read(cx, &mut read) {
        Poll::Ready(Ok(())) => {
            let n = read.filled().len();
            Poll::Ready(Ok((buf, n)))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        // `buf` goes back to the pool here.
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn pooled() -> usize {
        POOL.with(|p| p.borrow().len())
    }

    #[tokio::test]
    async fn a_waiting_read_holds_no_buffer_and_buffers_are_reused() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let before = pooled();
        let mut read = Box::pin(read_pooled(&mut server));
        // Nothing to read: pending, and the buffer it tried is back.
        assert!(futures_util::FutureExt::now_or_never(read.as_mut()).is_none());
        assert_eq!(pooled(), before.max(1));
        client.write_all(b"hello").await.unwrap();
        let (buf, n) = read.await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(pooled(), before.max(1) - 1, "the read keeps its buffer");
        let ptr = buf.as_ptr();
        buf.release();
        assert_eq!(PooledBuf::take().as_ptr(), ptr, "reused");
    }

    #[tokio::test]
    async fn end_of_input_is_zero_bytes() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let (_, n) = read_pooled(&mut server).await.unwrap();
        assert_eq!(n, 0);
    }
}
