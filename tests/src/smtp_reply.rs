//! Reading SMTP replies from a blocking stream: one owner for the rule
//! that a reply ends at the line whose fourth byte is not `-` (RFC 5321
//! section 4.2.1), for the test clients of every crate.

use std::io::{self, BufRead, ErrorKind};

/// One whole SMTP reply from `reader`: its lines joined, each with its
/// line end, decoded lossily (a test wants to see bad bytes, not fail on
/// them). End of input before the reply's last line is `UnexpectedEof`,
/// its message holding what was read until then.
///
/// ```
/// use lifecycle_tests::read_reply;
///
/// let mut input = &b"250-test.example\r\n250 SIZE 1000\r\n221 bye\r\n"[..];
/// assert_eq!(read_reply(&mut input).unwrap(), "250-test.example\r\n250 SIZE 1000\r\n");
/// assert_eq!(read_reply(&mut input).unwrap(), "221 bye\r\n");
/// let eof = read_reply(&mut input).unwrap_err();
/// assert_eq!(eof.kind(), std::io::ErrorKind::UnexpectedEof);
/// ```
pub fn read_reply(reader: &mut impl BufRead) -> io::Result<String> {
    let mut all = String::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!("closed after {all:?}"),
            ));
        }
        all.push_str(&String::from_utf8_lossy(&line));
        if line.get(3) != Some(&b'-') {
            return Ok(all);
        }
    }
}
