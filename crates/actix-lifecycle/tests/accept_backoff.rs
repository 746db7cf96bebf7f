//! Accept errors never spin a core: with the process out of descriptors
//! (EMFILE) and no reserve descriptor to answer with (the listener started
//! when none was left), the listener backs off and recovers when
//! descriptors free up; then it takes its reserve, so the next time
//! descriptors run out it answers clients busy. (With its reserve from the
//! start: `accept_reserve.rs`.)
//!
//! The limit is lowered on this very process with prlimit(1) (util-linux),
//! so this file holds a single test.

mod common;

use std::time::Duration;

use actix_lifecycle::GetListenerInfo;
use common::descriptors::{prlimit_available, OutOfDescriptors};
use common::{echo, eventually, roundtrip, tcp};
use tokio::io::AsyncReadExt;

#[actix::test]
async fn emfile_backs_off_instead_of_spinning_and_recovers() {
    if !prlimit_available() {
        eprintln!("SKIP: prlimit not installed");
        return;
    }
    let (listener, addr) = tcp("t");
    let lifecycle = common::start(vec![listener]);
    // The client's socket exists before the descriptors run out.
    let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();

    // No descriptor number above the current ones, every hole below
    // filled: not one left, so the listener gets no reserve.
    let out = OutOfDescriptors::now();
    let handler = echo().on_refused(|reason| format!("busy {reason}\n").into_bytes());
    let listener = lifecycle.serve("t", "echo", handler);
    let l = listener.clone();
    assert!(
        eventually(Duration::from_secs(20), || {
            let l = l.clone();
            async move { l.send(GetListenerInfo).await.unwrap().accepting }
        })
        .await
    );
    client.connect(&addr.into()).unwrap();
    client.set_nonblocking(true).unwrap();
    let blocked = tokio::net::TcpStream::from_std(client.into()).unwrap();
    // The server cannot accept it now: EMFILE, again and again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let info = listener.send(GetListenerInfo).await.unwrap();
    out.restore();

    assert!(
        info.accept_errors >= 1,
        "the accept failed with EMFILE: {info:?}"
    );
    assert!(
        info.accept_errors < 50,
        "a backing-off listener retries a handful of times in 600 ms, a spinning one \
         thousands: {} errors",
        info.accept_errors
    );
    assert!(info.accepting, "the listener keeps going");

    // Descriptors are back: the waiting connection is accepted and served.
    let mut blocked = blocked;
    assert_eq!(roundtrip(&mut blocked, b"served").await, b"served");
    let l = listener.clone();
    assert!(
        eventually(Duration::from_secs(20), || {
            let l = l.clone();
            async move { l.send(GetListenerInfo).await.unwrap().accepted == 1 }
        })
        .await
    );

    // Accepting again, the listener took a reserve descriptor: out of
    // descriptors once more, a new client is answered busy at once
    // instead of waiting in the backlog.
    let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let out = OutOfDescriptors::now();
    client.connect(&addr.into()).unwrap();
    client.set_nonblocking(true).unwrap();
    let mut stream = tokio::net::TcpStream::from_std(client.into()).unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut reply)).await;
    out.restore();
    assert!(
        read.is_ok(),
        "no reserve after recovery: the client was left in the backlog"
    );
    assert_eq!(String::from_utf8_lossy(&reply), "busy descriptors\n");
}
