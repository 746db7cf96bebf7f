//! The busy replies to connections refused by admission control
//! (`[limits]`) or for want of descriptors: one line, written without
//! waiting, then the connection is closed (see
//! `actix_lifecycle::ConnHandler::on_refused`).
//!
//! On implicit-TLS listeners (SMTPS, IMAPS) nothing is written: the client
//! expects a TLS handshake, not a line of text, and sees the connection
//! closed.

use actix_lifecycle::RefuseReason;

/// The SMTP busy reply (RFC 5321 §3.8: 421 and close; RFC 3463 4.7.0).
///
/// ```
/// use actix_lifecycle::RefuseReason;
/// let line = lifecycle_gateway::busy::smtp("mx.example.org", RefuseReason::AddressFull);
/// assert_eq!(line, b"421 4.7.0 mx.example.org too many connections, try again later\r\n");
/// ```
pub fn smtp(hostname: &str, _reason: RefuseReason) -> Vec<u8> {
    format!("421 4.7.0 {hostname} too many connections, try again later\r\n").into_bytes()
}

/// The IMAP busy reply (RFC 9051 §7.1.5: an untagged BYE instead of the
/// greeting).
///
/// ```
/// use actix_lifecycle::RefuseReason;
/// assert_eq!(lifecycle_gateway::busy::imap(RefuseReason::Rate), b"* BYE too many connections\r\n");
/// ```
pub fn imap(_reason: RefuseReason) -> Vec<u8> {
    b"* BYE too many connections\r\n".to_vec()
}
