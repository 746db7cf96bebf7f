//! A line reader with a fixed buffer: whatever a client sends, a session
//! holds at most [`BUFFER`] bytes of unread input, and a session waiting
//! for its client with nothing unread holds no buffer at all (it borrows
//! one from the thread's pool for each read that returns bytes, see
//! [`actix_lifecycle::read_pooled`]).

use std::io;

use actix_lifecycle::{read_pooled, PooledBuf, READ_BUFFER};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Size of the input buffer of a session.
pub(crate) const BUFFER: usize = READ_BUFFER;

/// One piece of input returned by [`LineReader::segment`].
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Segment<'a> {
    /// Bytes up to and including a line feed.
    Line(&'a [u8]),
    /// `max` bytes without a line feed (the line continues), or the bytes
    /// before end of input.
    Part(&'a [u8]),
    /// End of input.
    Eof,
}

/// Outcome of [`LineReader::line`].
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    /// A complete line without its line ending (CRLF or bare LF).
    Text(&'a [u8]),
    /// A line longer than the limit; it was read and discarded up to its
    /// line feed.
    TooLong,
    /// End of input (a final unterminated line is dropped).
    Eof,
}

/// Where [`LineReader::next_segment`] found its piece (a range of the
/// buffer, read with [`LineReader::bytes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    /// See [`Segment::Line`].
    Line(std::ops::Range<usize>),
    /// See [`Segment::Part`].
    Part(std::ops::Range<usize>),
    /// End of input.
    Eof,
}

/// Where [`LineReader::next_line`] found its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FoundLine {
    /// See [`Line::Text`].
    Text(std::ops::Range<usize>),
    /// See [`Line::TooLong`].
    TooLong,
    /// End of input.
    Eof,
}

/// Reads lines and line pieces from a stream through a fixed buffer.
///
/// Every method is cancel safe: a future dropped at its await point loses
/// no input and no state (what was read stays in the buffer), so a caller
/// may wait for it with a deadline and call it again.
pub(crate) struct LineReader {
    /// Unread input (`start..end`); `None` while nothing is kept.
    buf: Option<PooledBuf>,
    start: usize,
    end: usize,
    /// Inside a line longer than the limit of [`next_line`](Self::next_line).
    discarding: bool,
    /// Bytes received from the stream so far.
    received: u64,
}

impl LineReader {
    pub(crate) fn new() -> Self {
        LineReader {
            buf: None,
            start: 0,
            end: 0,
            discarding: false,
            received: 0,
        }
    }

    /// How many bytes were received and not yet returned.
    pub(crate) fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Whether a buffer is held (for tests: none while waiting with
    /// nothing unread).
    #[cfg(test)]
    pub(crate) fn holds_buffer(&self) -> bool {
        self.buf.is_some()
    }

    /// How many bytes were received from the stream in all.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// True when [`segment`](Self::segment) with this `max` can return
    /// without reading: use it to flush replies before blocking (pipelining).
    pub(crate) fn has_segment(&self, max: usize) -> bool {
        let avail = self.avail();
        let lim = avail.len().min(max);
        avail.len() >= max || avail[..lim].contains(&b'\n')
    }

    /// The unread input.
    fn avail(&self) -> &[u8] {
        match &self.buf {
            Some(buf) => &buf[self.start..self.end],
            None => &[],
        }
    }

    /// The bytes of a range returned by [`next_segment`](Self::next_segment)
    /// or [`next_line`](Self::next_line) (valid until the next call).
    pub(crate) fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        match &self.buf {
            Some(buf) => &buf[range],
            None => &[],
        }
    }

    /// The next line (with its line feed), or the next `max` bytes of a
    /// longer line. `max` is clamped to the buffer size.
    #[cfg(test)]
    pub(crate) async fn segment<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        max: usize,
    ) -> io::Result<Segment<'_>> {
        Ok(match self.next_segment(io, max).await? {
            Found::Line(r) => Segment::Line(self.bytes(r)),
            Found::Part(r) => Segment::Part(self.bytes(r)),
            Found::Eof => Segment::Eof,
        })
    }

    /// [`segment`](Self::segment), as a range of the buffer.
    pub(crate) async fn next_segment<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        max: usize,
    ) -> io::Result<Found> {
        let max = max.clamp(1, BUFFER);
        let mut eof = false;
        loop {
            let avail = self.avail();
            let lim = avail.len().min(max);
            if let Some(i) = avail[..lim].iter().position(|&b| b == b'\n') {
                let s = self.start;
                self.start += i + 1;
                return Ok(Found::Line(s..s + i + 1));
            }
            if avail.len() >= max || (eof && !avail.is_empty()) {
                let s = self.start;
                self.start += lim;
                return Ok(Found::Part(s..s + lim));
            }
            if eof {
                return Ok(Found::Eof);
            }
            // Need more input. With nothing unread, give the buffer back
            // and wait holding none: the read borrows one only when bytes
            // arrive. Otherwise keep the partial line, moved to the front
            // when the end is reached.
            let n = match &mut self.buf {
                Some(_) if self.start == self.end => {
                    self.buf = None;
                    self.start = 0;
                    self.end = 0;
                    continue;
                }
                None => {
                    let (buf, n) = read_pooled(io).await?;
                    self.buf = Some(buf);
                    self.start = 0;
                    self.end = 0;
                    n
                }
                Some(buf) => {
                    if self.end == buf.len() {
                        buf.copy_within(self.start..self.end, 0);
                        self.end -= self.start;
                        self.start = 0;
                    }
                    io.read(&mut buf[self.end..]).await?
                }
            };
            if n == 0 {
                eof = true;
            }
            self.end += n;
            self.received += n as u64;
        }
    }

    /// The next command line of at most `max` bytes including its line
    /// ending; longer lines are consumed and reported as [`Line::TooLong`].
    #[cfg(test)]
    pub(crate) async fn line<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        max: usize,
    ) -> io::Result<Line<'_>> {
        Ok(match self.next_line(io, max).await? {
            FoundLine::Text(r) => Line::Text(self.bytes(r)),
            FoundLine::TooLong => Line::TooLong,
            FoundLine::Eof => Line::Eof,
        })
    }

    /// [`line`](Self::line), as a range of the buffer.
    pub(crate) async fn next_line<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        max: usize,
    ) -> io::Result<FoundLine> {
        loop {
            let range = match self.next_segment(io, max).await? {
                Found::Eof => {
                    self.discarding = false;
                    return Ok(FoundLine::Eof);
                }
                Found::Part(_) => {
                    // Without a line feed the piece is either `max` bytes (too
                    // long) or the tail before end of input.
                    self.discarding = true;
                    continue;
                }
                Found::Line(range) => range,
            };
            if std::mem::take(&mut self.discarding) {
                return Ok(FoundLine::TooLong);
            }
            let begin = range.start;
            let end = range.end - 1;
            let end = if end > begin && self.bytes(end - 1..end) == b"\r" {
                end - 1
            } else {
                end
            };
            return Ok(FoundLine::Text(begin..end));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn lines_parts_and_eof() {
        let (mut client, mut server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            client.write_all(b"ab\r\ncdefgh\nij").await.unwrap();
        });
        let mut r = LineReader::new();
        assert_eq!(
            r.segment(&mut server, 100).await.unwrap(),
            Segment::Line(b"ab\r\n")
        );
        assert_eq!(
            r.segment(&mut server, 3).await.unwrap(),
            Segment::Part(b"cde")
        );
        assert_eq!(
            r.segment(&mut server, 3).await.unwrap(),
            Segment::Part(b"fgh")
        );
        assert_eq!(
            r.segment(&mut server, 3).await.unwrap(),
            Segment::Line(b"\n")
        );
        assert_eq!(
            r.segment(&mut server, 3).await.unwrap(),
            Segment::Part(b"ij")
        );
        assert_eq!(r.segment(&mut server, 3).await.unwrap(), Segment::Eof);
    }

    #[tokio::test]
    async fn a_waiting_reader_holds_no_buffer_but_keeps_half_a_line() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let mut r = LineReader::new();
        assert!(!r.holds_buffer(), "none before the first byte");
        client.write_all(b"NOOP\r\nHE").await.unwrap();
        assert_eq!(r.line(&mut server, 100).await.unwrap(), Line::Text(b"NOOP"));
        // Half a line is kept while the reader waits for the rest.
        assert!(futures_util::FutureExt::now_or_never(r.line(&mut server, 100)).is_none());
        assert!(r.holds_buffer(), "the partial line is kept");
        assert_eq!(r.buffered(), 2);
        client.write_all(b"LO\r\n").await.unwrap();
        assert_eq!(r.line(&mut server, 100).await.unwrap(), Line::Text(b"HELO"));
        // Everything consumed: waiting again gives the buffer back.
        assert!(futures_util::FutureExt::now_or_never(r.line(&mut server, 100)).is_none());
        assert!(!r.holds_buffer(), "an idle reader holds no buffer");
        client.write_all(b"QUIT\r\n").await.unwrap();
        assert_eq!(r.line(&mut server, 100).await.unwrap(), Line::Text(b"QUIT"));
    }

    #[tokio::test]
    async fn overlong_lines_are_consumed_whole() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let long = vec![b'x'; 3 * BUFFER];
        tokio::spawn(async move {
            client.write_all(&long).await.unwrap();
            client.write_all(b"\r\nNOOP\r\nlast").await.unwrap();
        });
        let mut r = LineReader::new();
        assert_eq!(r.line(&mut server, 1000).await.unwrap(), Line::TooLong);
        assert_eq!(
            r.line(&mut server, 1000).await.unwrap(),
            Line::Text(b"NOOP")
        );
        assert_eq!(r.line(&mut server, 1000).await.unwrap(), Line::Eof);
    }

    #[tokio::test]
    async fn limit_counts_the_line_ending() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut ok = vec![b'a'; 998];
        ok.extend_from_slice(b"\r\n");
        let mut long = vec![b'b'; 999];
        long.extend_from_slice(b"\r\n");
        client.write_all(&ok).await.unwrap();
        client.write_all(&long).await.unwrap();
        drop(client);
        let mut r = LineReader::new();
        assert!(
            !r.has_segment(1000),
            "nothing is buffered before the first read"
        );
        match r.line(&mut server, 1000).await.unwrap() {
            Line::Text(t) => assert_eq!(t.len(), 998),
            other => panic!("{other:?}"),
        }
        assert!(r.has_segment(1000), "the second line is already buffered");
        assert_eq!(r.line(&mut server, 1000).await.unwrap(), Line::TooLong);
    }
}
