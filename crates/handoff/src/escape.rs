//! Percent-escaping of names, addresses and paths in hand-off entries.

/// True for the bytes written as themselves; every other byte is `%XX`.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~/:@+[]".contains(&b)
}

/// Percent-escapes `bytes`: every byte outside `A-Z a-z 0-9 - . _ ~ / : @ + [ ]`
/// becomes `%XX` (upper-case hex). The result is printable ASCII with no
/// `,`, `=`, `%` (other than escapes), space or newline, so it survives any
/// environment and any list syntax.
///
/// ```
/// use lifecycle_handoff::{escape, unescape};
///
/// assert_eq!(escape(b"/run/a,b%\n\xff"), "/run/a%2Cb%25%0A%FF");
/// assert_eq!(unescape("/run/a%2Cb%25%0A%FF").unwrap(), b"/run/a,b%\n\xff");
/// ```
pub fn escape(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if is_plain(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

/// Reverses [`escape`], strictly: a `%` must be followed by two hex digits
/// and every other byte must be one `escape` writes as itself. On error,
/// returns the byte offset and what is wrong there.
pub fn unescape(text: &str) -> std::result::Result<Vec<u8>, (usize, &'static str)> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err((i, "`%` not followed by two hex digits")),
            }
            i += 3;
        } else if is_plain(b) {
            out.push(b);
            i += 1;
        } else {
            return Err((i, "a byte that must be written as %XX"));
        }
    }
    Ok(out)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
