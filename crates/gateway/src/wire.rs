//! The connection as a line protocol sees it: bounded input, buffered
//! replies flushed before the session would block (pipelining), an idle
//! timeout on every wait, the session's deadlines (its lifetime, and while
//! a DATA transfer runs its deadline and minimum average rate), and an end
//! as soon as the service aborts.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::line::{Found, FoundLine, LineReader};
use crate::session::{Cut, EndReason};
use crate::tls::{Upgradable, HANDSHAKE_TIMEOUT};
use crate::tls_stream::TlsAcceptor;

/// Replies are flushed at the latest when this much is pending.
const OUT_LIMIT: usize = 16 * 1024;
/// How long the last reply may take to leave before the connection closes.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// How long a DATA transfer may take (see [`Wire::start_data`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DataLimits {
    /// The whole transfer, from `354` to the final dot.
    pub(crate) deadline: Duration,
    /// Minimum average rate in bytes per second since `354` (0: none).
    pub(crate) min_rate: u64,
    /// The rate is first checked this long after `354`.
    pub(crate) grace: Duration,
}

struct DataClock {
    start: Instant,
    start_received: u64,
    end: Instant,
    min_rate: u64,
    grace_end: Instant,
}

impl DataClock {
    /// The earliest instant at which the average rate, with `received`
    /// bytes so far, falls below the minimum (`None`: no minimum).
    fn rate_check_at(&self, received: u64) -> Option<Instant> {
        if self.min_rate == 0 {
            return None;
        }
        let got = received.saturating_sub(self.start_received);
        // A millisecond past the exact point, so the check finds it crossed.
        let due =
            Duration::from_secs_f64(got as f64 / self.min_rate as f64) + Duration::from_millis(1);
        Some(self.grace_end.max(self.start + due))
    }

    fn too_slow(&self, now: Instant, received: u64) -> bool {
        if self.min_rate == 0 || now < self.grace_end {
            return false;
        }
        let got = u128::from(received.saturating_sub(self.start_received));
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        got * 1_000_000_000 < u128::from(self.min_rate) * elapsed
    }
}

/// What [`Wire::read`] waits for.
#[derive(Clone, Copy)]
enum Op {
    Line(usize),
    Segment(usize),
}

enum Got {
    Line(FoundLine),
    Segment(Found),
}

pub(crate) struct Wire<S> {
    io: S,
    reader: LineReader,
    out: Vec<u8>,
    abort: CancellationToken,
    idle: Duration,
    session_end: Option<Instant>,
    data: Option<DataClock>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire<S> {
    pub(crate) fn new(io: S, abort: CancellationToken, idle: Duration) -> Self {
        Wire {
            io,
            reader: LineReader::new(),
            // Allocated by the first reply, freed by each flush: a session
            // waiting for its client holds no output buffer.
            out: Vec::new(),
            abort,
            idle,
            session_end: None,
            data: None,
        }
    }

    /// Ends the session `max` from now, whatever it is doing then
    /// ([`Cut::MaxSession`]).
    pub(crate) fn limit_session(&mut self, max: Duration) {
        self.session_end = Instant::now().checked_add(max);
    }

    /// A DATA transfer starts: until [`end_data`](Self::end_data), reads
    /// are cut at its deadline ([`Cut::DataDeadline`]) or when the average
    /// rate falls below the minimum after the grace ([`Cut::MinDataRate`]).
    pub(crate) fn start_data(&mut self, limits: DataLimits) {
        let start = Instant::now();
        let far = || start + Duration::from_secs(365 * 24 * 3600);
        self.data = Some(DataClock {
            start,
            start_received: self.reader.received(),
            end: start.checked_add(limits.deadline).unwrap_or_else(far),
            min_rate: limits.min_rate,
            grace_end: start.checked_add(limits.grace).unwrap_or_else(far),
        });
    }

    /// The DATA transfer is over (see [`start_data`](Self::start_data)).
    pub(crate) fn end_data(&mut self) {
        self.data = None;
    }

    /// The next instant at which a deadline must be checked.
    fn next_check(&self, idle_end: Instant) -> Instant {
        let mut at = idle_end;
        if let Some(end) = self.session_end {
            at = at.min(end);
        }
        if let Some(data) = &self.data {
            at = at.min(data.end);
            if let Some(rate) = data.rate_check_at(self.reader.received()) {
                at = at.min(rate);
            }
        }
        at
    }

    /// Which deadline has passed at `now`, if any.
    fn expired(&self, now: Instant, idle_end: Instant) -> Option<EndReason> {
        if self.session_end.is_some_and(|end| now >= end) {
            return Some(EndReason::Cut(Cut::MaxSession));
        }
        if let Some(data) = &self.data {
            if now >= data.end {
                return Some(EndReason::Cut(Cut::DataDeadline));
            }
            if data.too_slow(now, self.reader.received()) {
                return Some(EndReason::Cut(Cut::MinDataRate));
            }
        }
        (now >= idle_end).then_some(EndReason::IdleTimeout)
    }

    /// Waits for `op` under the idle timeout and every deadline. The
    /// reader is cancel safe, so a check that finds no deadline passed
    /// (the rate was fine after all) simply waits again.
    async fn read(&mut self, op: Op) -> Result<Got, EndReason> {
        let idle_end = Instant::now() + self.idle;
        loop {
            let at = self.next_check(idle_end);
            let Wire {
                reader, io, abort, ..
            } = self;
            let result = tokio::select! {
                biased;
                _ = abort.cancelled() => return Err(EndReason::Aborted),
                r = tokio::time::timeout_at(at, async {
                    match op {
                        Op::Line(max) => reader.next_line(io, max).await.map(Got::Line),
                        Op::Segment(max) => reader.next_segment(io, max).await.map(Got::Segment),
                    }
                }) => r,
            };
            match result {
                Ok(Ok(got)) => return Ok(got),
                Ok(Err(e)) => return Err(attribute(EndReason::Io(e.kind()), abort)),
                Err(_) => {
                    if let Some(end) = self.expired(Instant::now(), idle_end) {
                        return Err(end);
                    }
                }
            }
        }
    }

    /// True when the client sent bytes that were not read yet (pipelined
    /// after the last line returned).
    pub(crate) fn has_buffered_input(&self) -> bool {
        self.reader.buffered() > 0
    }

    /// The session's abort: a step that would commit something the
    /// client could not be told of checks it first.
    pub(crate) fn abort_token(&self) -> CancellationToken {
        self.abort.clone()
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
        let end = match self.read(Op::Line(max)).await? {
            Got::Line(FoundLine::Text(range)) => {
                return Ok(Some(self.reader.bytes(range).to_vec()))
            }
            Got::Line(FoundLine::TooLong) => return Ok(None),
            Got::Line(FoundLine::Eof) | Got::Segment(_) => EndReason::ClientClosed,
        };
        Err(attribute(end, &self.abort))
    }

    /// The next line piece (see [`LineReader::segment`]): the bytes and
    /// whether they end a line. End of input is [`EndReason::ClientClosed`].
    pub(crate) async fn segment(&mut self, max: usize) -> Result<(&[u8], bool), EndReason> {
        if !self.reader.has_segment(max) {
            self.flush_within(self.idle).await?;
        }
        let end = match self.read(Op::Segment(max)).await? {
            Got::Segment(Found::Line(range)) => return Ok((self.reader.bytes(range), true)),
            Got::Segment(Found::Part(range)) => return Ok((self.reader.bytes(range), false)),
            Got::Segment(Found::Eof) | Got::Line(_) => EndReason::ClientClosed,
        };
        Err(attribute(end, &self.abort))
    }

    /// Reads and throws away the next `n` bytes through the fixed buffer
    /// (an announced literal the protocol does not take), under the same
    /// timeouts as every read.
    pub(crate) async fn discard(&mut self, mut n: u64) -> Result<(), EndReason> {
        while n > 0 {
            let max = usize::try_from(n).unwrap_or(usize::MAX);
            let (bytes, _) = self.segment(max).await?;
            n = n.saturating_sub(bytes.len() as u64);
        }
        Ok(())
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
        // Freed, not cleared: the session is about to wait for its client.
        *out = Vec::new();
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
