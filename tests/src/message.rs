//! Test messages that a load client can stream line by line and a test can
//! regenerate to compare with the spool, without either holding them whole.

/// Length of every line of [`message_lines`], CRLF included.
pub const MESSAGE_LINE_LEN: usize = 78;

/// The lines of a test message tagged `tag` of at least `size` bytes: each
/// [`MESSAGE_LINE_LEN`] bytes ending in CRLF, none starting with a dot (so
/// nothing is dot-stuffed), unique to `tag` and the line number.
///
/// ```
/// let lines: Vec<Vec<u8>> = lifecycle_tests::message_lines("t", 100).collect();
/// assert_eq!(lines.len(), 2);
/// assert!(lines[0].starts_with(b"t line 00000001 "));
/// assert!(lines.iter().all(|l| l.len() == 78 && l.ends_with(b"\r\n")));
/// ```
pub fn message_lines(tag: &str, size: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
    let count = size.div_ceil(MESSAGE_LINE_LEN) as u64;
    (1..=count).map(move |n| {
        let mut line = format!("{tag} line {n:08} ").into_bytes();
        line.resize(MESSAGE_LINE_LEN - 2, b'a' + (n % 26) as u8);
        line.extend_from_slice(b"\r\n");
        line
    })
}
