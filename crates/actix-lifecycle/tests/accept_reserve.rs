//! Out of descriptors, clients are answered, not left in the backlog
//! (issue 14): the listener's reserve descriptor accepts each waiting
//! client, which reads the busy line and end-of-file; the refusals are
//! counted as `descriptors`; the loop does not spin; once descriptors are
//! back, clients are served again.
//!
//! The limit is lowered on this very process with prlimit(1) (util-linux),
//! so this file holds a single test.

mod common;

use std::time::Duration;

use actix_lifecycle::GetListenerInfo;
use common::descriptors::{prlimit_available, OutOfDescriptors};
use common::{echo, eventually, metric, roundtrip};
use tokio::io::AsyncReadExt;

const CLIENTS: usize = 3;

#[actix::test]
async fn emfile_answers_each_waiting_client_busy_and_recovers() {
    if !prlimit_available() {
        eprintln!("SKIP: prlimit not installed");
        return;
    }
    let (lifecycle, addr, metrics) = common::with_metrics("t");
    let handler = echo().on_refused(|reason| format!("busy {reason}\n").into_bytes());
    let listener = lifecycle.serve("t", "echo", handler);
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(roundtrip(&mut first, b"ok").await, b"ok");

    // The clients' sockets exist before the descriptors run out; then not
    // one descriptor is left (the listener holds its reserve).
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap())
        .collect();
    let out = OutOfDescriptors::now();
    let mut replies = Vec::new();
    // Kept open until the end: a closed one would free a descriptor.
    let mut answered = Vec::new();
    for client in clients {
        client.connect(&addr.into()).unwrap();
        client.set_nonblocking(true).unwrap();
        let mut stream = tokio::net::TcpStream::from_std(client.into()).unwrap();
        let mut reply = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut reply)).await;
        replies.push((read.is_ok(), String::from_utf8_lossy(&reply).into_owned()));
        answered.push(stream);
    }
    let info = listener.send(GetListenerInfo).await.unwrap();
    out.restore();
    drop(answered);

    eprintln!("replies while out of descriptors: {replies:?}; {info:?}");
    for (closed, reply) in &replies {
        assert!(closed, "a waiting client was left in the backlog");
        assert_eq!(reply, "busy descriptors\n");
    }
    let sample = r#"lifecycle_refused_total{listener="t",protocol="echo",reason="descriptors"}"#;
    assert_eq!(metric(&metrics, sample), Some(CLIENTS as f64));
    assert_eq!(
        lifecycle.connections().live(),
        1,
        "refused clients were never live"
    );
    assert!(
        info.accept_errors < 50,
        "each client costs an EMFILE or two, a spinning loop thousands: {}",
        info.accept_errors
    );
    assert!(info.accepting, "the listener keeps going");

    // Descriptors are back: a new client is served.
    let mut next = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(roundtrip(&mut next, b"served").await, b"served");
    let l = listener.clone();
    assert!(
        eventually(Duration::from_secs(20), || {
            let l = l.clone();
            async move { l.send(GetListenerInfo).await.unwrap().accepted == 2 + CLIENTS as u64 }
        })
        .await
    );
}
