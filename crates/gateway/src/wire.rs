//! The connection as a line protocol sees it: bounded input, buffered
//! replies flushed before the session would block (pipelining), an idle
//! timeout on every wait, and an end as soon as the service aborts.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::line::{Line, LineReader, Segment};
use crate::session::EndReason;
use crate::tls::{TlsAcceptor, Upgradable, HANDSHAKE_TIMEOUT};

/// Replies are flushed at the latest when this much is pending.
const OUT_LIMIT: usize = 16 * 1024;
/// How long the last reply may take to leave before the connection closes.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

pub(crate) struct Wire<S> {
    io: S,
    reader: LineReader,
    out: Vec<u8>,
    abort: CancellationToken,
    idle: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub(crate) fn new(io: S, abort: CancellationToken, idle: Duration) -> Self {
        Wire {
            io,
            reader: LineReader::new(),
            out: Vec::with_capacity(512),
            abort,
            idle,
        }
    }

    /// True when the client sent bytes that were not read yet (pipelined
    /// after the last line returned).
    pub(crate) fn has_buffered_input(&self) -> bool {
        self.reader.buffered() > 0
    }

    /// Queues a reply line (without its CRLF).
    pub(crate) fn reply(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Flushes when too much is pending (a client that pipelines without
    /// reading must not grow our buffer).
    pub(crate) async fn flush_if_full(&mut self) -> Result<(), EndReason> {
        if self.out.len() > OUT_LIMIT {
            self.flush_within(self.idle).await?;
        }
        Ok(())
    }

    /// The next line (owned, without line ending), `None` when it was longer
    /// than `max`. Pending replies are flushed first when the read would block.
    pub(crate) async fn line(&mut self, max: usize) -> Result<Option<Vec<u8>>, EndReason> {
        if !self.reader.has_segment(max) {
            self.flush_within(self.idle).await?;
        }
        let Wire {
            reader, io, abort, ..
        } = self;
        let result = tokio::select! {
            biased;
            _ = abort.cancelled() => Err(EndReason::Aborted),
            r = tokio::time::timeout(self.idle, reader.line(io, max)) => match r {
                Err(_) => Err(EndReason::IdleTimeout),
                Ok(Err(e)) => Err(EndReason::Io(e.kind())),
                Ok(Ok(Line::Eof)) => Err(EndReason::ClientClosed),
                Ok(Ok(Line::TooLong)) => Ok(None),
                Ok(Ok(Line::Text(t))) => Ok(Some(t.to_vec())),
            },
        };
        result.map_err(|end| attribute(end, abort))
    }

    /// The next line piece (see [`LineReader::segment`]): the bytes and
    /// whether they end a line. End of input is [`EndReason::ClientClosed`].
    pub(crate) async fn segment(&mut self, max: usize) -> Result<(&[u8], bool), EndReason> {
        if !self.reader.has_segment(max) {
            self.flush_within(self.idle).await?;
        }
        let Wire {
            reader, io, abort, ..
        } = self;
        let result = tokio::select! {
            biased;
            _ = abort.cancelled() => Err(EndReason::Aborted),
            r = tokio::time::timeout(self.idle, reader.segment(io, max)) => match r {
                Err(_) => Err(EndReason::IdleTimeout),
                Ok(Err(e)) => Err(EndReason::Io(e.kind())),
                Ok(Ok(Segment::Eof)) => Err(EndReason::ClientClosed),
                Ok(Ok(Segment::Part(p))) => Ok((p, false)),
                Ok(Ok(Segment::Line(l))) => Ok((l, true)),
            },
        };
        result.map_err(|end| attribute(end, abort))
    }

    /// Writes every pending reply, waiting at most `limit`.
    pub(crate) async fn flush_within(&mut self, limit: Duration) -> Result<(), EndReason> {
        if self.out.is_empty() {
            return Ok(());
        }
        let Wire { io, out, abort, .. } = self;
        let result = tokio::select! {
            biased;
            _ = abort.cancelled() => return Err(EndReason::Aborted),
            r = tokio::time::timeout(limit, async {
                io.write_all(out).await?;
                io.flush().await
            }) => r,
        };
        out.clear();
        match result {
            Err(_) => Err(EndReason::IdleTimeout),
            Ok(Err(e)) => Err(attribute(EndReason::Io(e.kind()), abort)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Sends what is pending and closes the write side, briefly; skipped
    /// when the session was aborted.
    pub(crate) async fn finish(&mut self, end: &EndReason) {
        if *end == EndReason::Aborted {
            return;
        }
        if self.flush_within(FINAL_FLUSH).await.is_ok() {
            let abort = self.abort.clone();
            tokio::select! {
                _ = abort.cancelled() => {}
                _ = tokio::time::timeout(FINAL_FLUSH, self.io.shutdown()) => {}
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<Upgradable<S>> {
    /// Flushes pending replies, then runs the TLS handshake on the stream
    /// (STARTTLS). The input buffer must be empty (checked by the caller).
    pub(crate) async fn start_tls(&mut self, acceptor: &TlsAcceptor) -> Result<(), EndReason> {
        self.flush_within(self.idle).await?;
        let Wire { io, abort, .. } = self;
        let result = tokio::select! {
            biased;
            _ = abort.cancelled() => Err(EndReason::Aborted),
            r = tokio::time::timeout(HANDSHAKE_TIMEOUT, io.upgrade(acceptor)) => match r {
                Err(_) => Err(EndReason::Tls(format!("no handshake within {HANDSHAKE_TIMEOUT:?}"))),
                Ok(Err(e)) => Err(EndReason::Tls(e.to_string())),
                Ok(Ok(())) => Ok(()),
            },
        };
        result.map_err(|end| match end {
            EndReason::Tls(_) if abort.is_cancelled() => EndReason::Aborted,
            other => other,
        })
    }

    /// The negotiated TLS version and cipher suite, once TLS runs.
    pub(crate) fn tls_details(&self) -> Option<(String, String)> {
        self.io.tls_details()
    }
}

/// An aborted connection's stream reports end of input or an error (the
/// lifecycle's `Conn` makes it so); name the real reason.
fn attribute(end: EndReason, abort: &CancellationToken) -> EndReason {
    match end {
        EndReason::ClientClosed | EndReason::Io(_) if abort.is_cancelled() => EndReason::Aborted,
        other => other,
    }
}
