//! What an idle session costs (issue 19): the size of a session future,
//! which its task holds for the connection's whole life. Buffers are not
//! in it (they are borrowed while there is input, see `line.rs`); a change
//! that puts one back, or a large state held across the idle wait, fails
//! here.

use std::sync::Arc;

use actix_lifecycle::PhaseController;
use slog::{o, Logger};
use tokio::net::TcpStream;

use crate::{serve_imap, serve_smtp, ImapContext, SmtpContext, Spool};

/// Largest accepted size of a plain SMTP or IMAP session future, in bytes
/// (test profile; 2,344 for SMTP before DATA and STARTTLS were boxed).
const SESSION_FUTURE_MAX: usize = 1536;

/// A connected stream, as the listener hands one to a session.
async fn stream() -> TcpStream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    drop(client.unwrap());
    accepted.unwrap().0
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
