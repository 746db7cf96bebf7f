//! A message body on its way from the connection to the spool: bounded
//! memory (one fixed buffer, written out whenever it is nearly full), the
//! size limit enforced while streaming, bare CR and LF normalised or
//! detected, and the temporary file removed when the message is rejected.

use std::sync::Arc;

use crate::config::BareNewlines;
use crate::spool::{Spool, SpoolError, SpoolWriter, StoredMessage};

/// Size of the buffer between the connection and the spool file.
pub(super) const CHUNK: usize = 64 * 1024;
/// The buffer is written out once it holds this much: one more data line
/// (1000 octets, at most doubled by normalisation) always fits.
const FLUSH_AT: usize = CHUNK - 4 * 1024;

/// Why a message is not stored. When several apply, the first listed here
/// is answered.
#[derive(Debug)]
pub(super) enum Rejected {
    /// A line longer than 1000 octets including CRLF.
    LineTooLong,
    /// More octets than the size limit.
    TooBig,
    /// A bare CR or LF, with `bare_newlines = "reject"`.
    BareNewline,
    /// The spool could not take it.
    Spool(SpoolError),
    /// The session was aborted before the commit: nothing is stored (the
    /// client could not be told, and would send the message again).
    Aborted,
}

/// Rewrites every bare CR and bare LF (one not part of a CRLF) as CRLF,
/// across any split of the input into pieces.
#[derive(Debug, Default)]
pub(super) struct Newlines {
    /// The last byte seen was a CR whose successor is not known yet.
    pending_cr: bool,
    seen_bare: bool,
}

impl Newlines {
    /// Appends `input` to `out`, normalised.
    pub(super) fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        if input.is_empty() {
            return;
        }
        if std::mem::take(&mut self.pending_cr) {
            out.extend_from_slice(b"\r\n");
            if input[0] == b'\n' {
                input = &input[1..];
            } else {
                self.seen_bare = true;
            }
        }
        while let Some(i) = input.iter().position(|&b| b == b'\r' || b == b'\n') {
            out.extend_from_slice(&input[..i]);
            let rest = if input[i] == b'\n' {
                self.seen_bare = true;
                i + 1
            } else {
                match input.get(i + 1) {
                    Some(b'\n') => i + 2,
                    Some(_) => {
                        self.seen_bare = true;
                        i + 1
                    }
                    None => {
                        self.pending_cr = true;
                        input = &[];
                        break;
                    }
                }
            };
            out.extend_from_slice(b"\r\n");
            input = &input[rest..];
        }
        out.extend_from_slice(input);
    }

    /// The input ended: a CR still pending was bare.
    pub(super) fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            self.seen_bare = true;
            out.extend_from_slice(b"\r\n");
        }
    }

    /// True once a bare CR or LF was seen.
    pub(super) fn seen_bare(&self) -> bool {
        self.seen_bare
    }
}

/// The receiving end of one DATA transfer.
pub(super) struct BodySink {
    /// `None` once the message is rejected (its file is then gone).
    writer: Option<SpoolWriter>,
    buf: Vec<u8>,
    newlines: Newlines,
    mode: BareNewlines,
    /// Body octets received (dot-unstuffed, before normalisation).
    received: usize,
    max: usize,
    line_too_long: bool,
    too_big: bool,
    bare: bool,
    spool_error: Option<SpoolError>,
}

impl BodySink {
    pub(super) fn new(spool: &Arc<Spool>, mode: BareNewlines, max: usize) -> Self {
        BodySink {
            writer: Some(spool.begin()),
            buf: Vec::with_capacity(CHUNK),
            newlines: Newlines::default(),
            mode,
            received: 0,
            max,
            line_too_long: false,
            too_big: false,
            bare: false,
            spool_error: None,
        }
    }

    /// Body octets received so far.
    pub(super) fn received(&self) -> usize {
        self.received
    }

    /// Adds bytes that are stored as they are (the envelope header lines),
    /// writing the buffer out when it is full.
    pub(super) async fn push_raw(&mut self, bytes: &[u8]) {
        if self.writer.is_some() {
            self.buf.extend_from_slice(bytes);
            self.flush_if_full().await;
        }
    }

    /// Adds dot-unstuffed body bytes (at most a data line), writing the
    /// buffer out when it is full.
    pub(super) async fn push(&mut self, body: &[u8]) {
        self.received = self.received.saturating_add(body.len());
        if self.received > self.max {
            self.too_big = true;
            self.discard();
        }
        if self.writer.is_none() {
            return;
        }
        self.newlines.push(body, &mut self.buf);
        if self.newlines.seen_bare() && self.mode == BareNewlines::Reject {
            self.bare = true;
            self.discard();
            return;
        }
        self.flush_if_full().await;
    }

    /// A data line was too long: the message is rejected.
    pub(super) fn line_too_long(&mut self) {
        self.line_too_long = true;
        self.discard();
    }

    /// The final dot arrived: stores the message, or says why not. Once
    /// the last bytes are written, `aborted` is asked before the commit:
    /// true drops the message (its temporary file is removed).
    pub(super) async fn finish(
        mut self,
        aborted: impl Fn() -> bool,
    ) -> Result<StoredMessage, Rejected> {
        if self.writer.is_some() {
            self.newlines.finish(&mut self.buf);
            if self.newlines.seen_bare() && self.mode == BareNewlines::Reject {
                self.bare = true;
                self.discard();
            }
        }
        if let Some(writer) = &mut self.writer {
            if !self.buf.is_empty() {
                if let Err(e) = writer.write_async(&mut self.buf).await {
                    self.spool_error = Some(e);
                    self.discard();
                }
            }
        }
        if let Some(why) = self.rejected() {
            return Err(why);
        }
        let writer = self.writer.take().ok_or_else(|| {
            Rejected::Spool(SpoolError::Task("the message writer is gone".to_owned()))
        })?;
        if aborted() {
            return Err(Rejected::Aborted);
        }
        writer.commit_async().await.map_err(Rejected::Spool)
    }

    fn rejected(&mut self) -> Option<Rejected> {
        if self.line_too_long {
            Some(Rejected::LineTooLong)
        } else if self.too_big {
            Some(Rejected::TooBig)
        } else if self.bare {
            Some(Rejected::BareNewline)
        } else {
            self.spool_error.take().map(Rejected::Spool)
        }
    }

    async fn flush_if_full(&mut self) {
        if self.buf.len() < FLUSH_AT {
            return;
        }
        let Some(writer) = &mut self.writer else {
            return;
        };
        if let Err(e) = writer.write_async(&mut self.buf).await {
            self.spool_error = Some(e);
            self.discard();
        }
    }

    /// Drops the writer (removing its temporary file) and the buffer: the
    /// rest of the message is read and thrown away.
    fn discard(&mut self) {
        self.writer = None;
        if self.buf.capacity() > 0 {
            self.buf = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[tokio::test]
    async fn an_abort_before_the_commit_stores_nothing_and_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let spool = Arc::new(crate::spool::Spool::open(dir.path(), &log).unwrap());
        let files = |d: &std::path::Path| {
            std::fs::read_dir(d)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().file_type().unwrap().is_file())
                .count()
        };
        // More than one buffer, so part of it is on disk before the end.
        let line = vec![b'a'; 998];
        let mut aborted = BodySink::new(&spool, BareNewlines::Normalize, 10 << 20);
        for _ in 0..200 {
            aborted.push(&line).await;
            aborted.push(b"\r\n").await;
        }
        assert!(matches!(
            aborted.finish(|| true).await,
            Err(Rejected::Aborted)
        ));
        assert_eq!(files(dir.path()), 0, "nothing stored");
        assert_eq!(files(&dir.path().join("tmp")), 0, "temporary file removed");
        // The same message without the abort is stored.
        let mut kept = BodySink::new(&spool, BareNewlines::Normalize, 10 << 20);
        kept.push(b"hello\r\n").await;
        assert!(kept.finish(|| false).await.is_ok());
        assert_eq!(files(dir.path()), 1);
    }

    fn normalise(pieces: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut n = Newlines::default();
        let mut out = Vec::new();
        for p in pieces {
            n.push(p, &mut out);
        }
        n.finish(&mut out);
        (out, n.seen_bare())
    }

    /// The rule, byte by byte, with the whole input in view.
    fn reference(input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut bare = false;
        let mut i = 0;
        while i < input.len() {
            match (input[i], input.get(i + 1)) {
                (b'\r', Some(b'\n')) => {
                    out.extend_from_slice(b"\r\n");
                    i += 2;
                    continue;
                }
                (b'\r' | b'\n', _) => {
                    bare = true;
                    out.extend_from_slice(b"\r\n");
                }
                (b, _) => out.push(b),
            }
            i += 1;
        }
        (out, bare)
    }

    fn has_bare(bytes: &[u8]) -> bool {
        bytes.iter().enumerate().any(|(i, &b)| match b {
            b'\r' => bytes.get(i + 1) != Some(&b'\n'),
            b'\n' => i == 0 || bytes[i - 1] != b'\r',
            _ => false,
        })
    }

    #[test]
    fn bare_line_endings_become_crlf() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"a\r\nb\r\n", b"a\r\nb\r\n", false),
            (b"foo\n.\nbar\r\n", b"foo\r\n.\r\nbar\r\n", true),
            (b"a\rb\r\n", b"a\r\nb\r\n", true),
            (b"a\r\r\n", b"a\r\n\r\n", true),
            (b"a\n\r\n", b"a\r\n\r\n", true),
            (b"end\r", b"end\r\n", true),
            (b"", b"", false),
        ];
        for (input, want, bare) in cases {
            assert_eq!(normalise(&[input]), (want.to_vec(), *bare), "{input:?}");
        }
        // A CRLF split between two pieces is one line ending, not two.
        assert_eq!(
            normalise(&[b"a\r", b"\nb\r\n"]),
            (b"a\r\nb\r\n".to_vec(), false)
        );
        assert_eq!(normalise(&[b"a\r", b"", b"b"]), (b"a\r\nb".to_vec(), true));
    }

    proptest! {
        /// However the input is cut into pieces, the output is the same as
        /// the byte-by-byte rule's, and it holds no bare CR or LF.
        #[test]
        fn any_chunking_gives_the_same_result(
            input in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), any::<u8>()], 0..400),
            cuts in proptest::collection::vec(0usize..400, 0..20),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts {
                pieces.push(&input[at..c]);
                at = c;
            }
            pieces.push(&input[at..]);
            let (out, bare) = normalise(&pieces);
            prop_assert_eq!((&out, bare), (&reference(&input).0, reference(&input).1));
            prop_assert!(!has_bare(&out), "{:?}", out);
            prop_assert_eq!(bare, has_bare(&input));
        }
    }
}
