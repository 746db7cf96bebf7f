//! What an idle session costs (issue 19): the size of a session future,
//! which its task holds for the connection's whole life. Buffers are not
//! in it (they are borrowed while there is input, see `line.rs`); a change
//! that puts one back, or a large state held across the idle wait, fails
//! here. An implicit-TLS session's future holds the TLS stream as a pointer
//! and its handshake in a box of its own, freed when it ends: a change
//! that puts rustls' connection state or the handshake back inline fails
//! here too.

use std::sync::Arc;

use actix_lifecycle::PhaseController;
use slog::{o, Logger};
use tokio::net::TcpStream;

use crate::app::tls_session;
use crate::tls_stream::TlsAcceptor;
use crate::{serve_imap, serve_smtp, tls_server_config, ImapContext, SmtpContext, Spool};

/// Largest accepted size of a plain SMTP or IMAP session future, in bytes
/// (test profile; 2,344 for SMTP before DATA and STARTTLS were boxed).
const SESSION_FUTURE_MAX: usize = 1536;

/// Largest accepted size of an implicit-TLS SMTP or IMAP session future,
/// in bytes (test profile; 1,208 for SMTP: the plain session's future and
/// a few pointers. With the TLS stream and the handshake inline, the boxed
/// part of an SMTP session alone was 4,824).
const TLS_SESSION_FUTURE_MAX: usize = 1536;

/// A connected stream, as the listener hands one to a session.
async fn stream() -> TcpStream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    drop(client.unwrap());
    accepted.unwrap().0
}

/// An acceptor with a fresh self-signed certificate.
fn acceptor(dir: &std::path::Path) -> TlsAcceptor {
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, pair.cert.pem()).unwrap();
    std::fs::write(&key, pair.key_pair.serialize_pem()).unwrap();
    let open = |p: &std::path::Path| std::fs::File::open(p).unwrap();
    TlsAcceptor::from(tls_server_config(&cert, open(&cert), &key, open(&key)).unwrap())
}

#[tokio::test]
async fn session_futures_stay_small() {
    let log = Logger::root(slog::Discard, o!());
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path().join("spool"), &log).unwrap());
    let phases = PhaseController::new();
    let smtp = serve_smtp(
        stream().await,
        "peer".into(),
        phases.handle(),
        Arc::new(SmtpContext::new(spool, log.clone())),
    );
    let imap = serve_imap(
        stream().await,
        "peer".into(),
        phases.handle(),
        Arc::new(ImapContext::new(log)),
    );
    let (smtp, imap) = (std::mem::size_of_val(&smtp), std::mem::size_of_val(&imap));
    eprintln!("session futures: smtp {smtp} bytes, imap {imap} bytes");
    assert!(
        smtp <= SESSION_FUTURE_MAX,
        "an SMTP session future is {smtp} bytes, over {SESSION_FUTURE_MAX}: box large state held across the idle wait"
    );
    assert!(
        imap <= SESSION_FUTURE_MAX,
        "an IMAP session future is {imap} bytes, over {SESSION_FUTURE_MAX}: box large state held across the idle wait"
    );
}

#[tokio::test]
async fn tls_session_futures_stay_small() {
    let log = Logger::root(slog::Discard, o!());
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path().join("spool"), &log).unwrap());
    let acceptor = acceptor(dir.path());
    let phases = PhaseController::new();
    let smtp = tls_session(
        stream().await,
        "peer".into(),
        phases.handle(),
        Arc::new(SmtpContext::new(spool, log.clone())),
        acceptor.clone(),
        log.clone(),
    );
    let imap = tls_session(
        stream().await,
        "peer".into(),
        phases.handle(),
        Arc::new(ImapContext::new(log.clone())),
        acceptor,
        log,
    );
    let (smtp, imap) = (std::mem::size_of_val(&smtp), std::mem::size_of_val(&imap));
    eprintln!("implicit-TLS session futures: smtp {smtp} bytes, imap {imap} bytes");
    assert!(
        smtp <= TLS_SESSION_FUTURE_MAX,
        "an implicit-TLS SMTP session future is {smtp} bytes, over {TLS_SESSION_FUTURE_MAX}: keep the TLS stream and the handshake boxed"
    );
    assert!(
        imap <= TLS_SESSION_FUTURE_MAX,
        "an implicit-TLS IMAP session future is {imap} bytes, over {TLS_SESSION_FUTURE_MAX}: keep the TLS stream and the handshake boxed"
    );
}
