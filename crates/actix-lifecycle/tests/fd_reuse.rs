//! Abort never touches a descriptor that was closed and reused by a newer
//! connection.
//!
//! The race: connection A's socket closes while A is still registered (its
//! handler dropped the stream but not yet the registration). The kernel
//! gives the very same fd number to a new connection B. A registry that
//! stored A's fd number and called shutdown(2) on it at abort time would
//! cut B. Ours holds no fd numbers: aborting A only flips A's own flag.
//!
//! This file holds one test so that no other test opens descriptors in
//! between and the fd reuse is deterministic (lowest free number first).

mod common;

use std::os::fd::AsRawFd;

use actix::Actor;
use actix_lifecycle::{Abort, ConnectionRegistry};
use common::{logger, roundtrip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Accepts one connection and returns both ends (server, client).
async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (server, client)
}

/// Serves one echo round on `server` and checks it from `client`.
async fn echo_once<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    server: &mut S,
    client: &mut TcpStream,
    msg: &[u8],
) {
    client.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    server.read_exact(&mut buf).await.unwrap();
    server.write_all(&buf).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    client.read_exact(&mut back).await.unwrap();
    assert_eq!(back, msg);
}

#[actix::test]
async fn aborting_a_closed_connection_never_hits_the_connection_that_reused_its_fd() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let one = ConnectionRegistry::builder()
        .logger(logger())
        .build()
        .unwrap();
    let other = ConnectionRegistry::builder()
        .logger(logger())
        .build()
        .unwrap();
    let (one_handle, other_handle) = (one.handle(), other.handle());
    let one_addr = one.start();
    let kind = one_handle.kind("test", "t");
    let shard = one_handle.new_shard();
    let other_shard = other_handle.new_shard();

    for (round, same_registry) in [(0, true), (1, false)] {
        // Connection A, registered and wrapped.
        let (server_a, mut client_a) = pair(&listener).await;
        let fd_a = server_a.as_raw_fd();
        let mut a = shard.register(&kind).track(server_a);
        let id_a = a.id();
        echo_once(&mut a, &mut client_a, b"a works").await;

        // A's socket closes, its registration lives on (the window).
        let (server_a, guard_a) = a.into_parts();
        drop(server_a);
        drop(client_a);

        // B arrives and gets A's fd number.
        let (server_b, mut client_b) = pair(&listener).await;
        assert_eq!(
            server_b.as_raw_fd(),
            fd_a,
            "round {round}: could not force the fd reuse this test is about"
        );
        let b_shard = if same_registry { &shard } else { &other_shard };
        let mut b = b_shard.register(&kind).track(server_b);

        // Abort A: by id in the same registry, or by Shutdown of A's registry.
        if same_registry {
            assert!(one_addr.send(Abort { id: id_a }).await.unwrap());
        } else {
            assert_eq!(one_handle.shutdown(), 1, "only A is in A's registry");
        }
        assert!(guard_a.is_aborted(), "A is aborted");
        assert!(!b.is_aborted(), "B is not");

        // B still works both ways, through its socket (same fd number).
        echo_once(&mut b, &mut client_b, b"b still works").await;
        echo_once(&mut b, &mut client_b, b"and again").await;
        assert_eq!(roundtrip_through(&mut client_b, &mut b).await, b"last");
        drop(guard_a);
        drop(b);
    }
    assert_eq!(one_handle.live(), 0);
    assert_eq!(other_handle.live(), 0);
}

async fn roundtrip_through<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    client: &mut TcpStream,
    server: &mut S,
) -> Vec<u8> {
    let echo = async {
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        server.write_all(&buf).await.unwrap();
    };
    let (got, ()) = tokio::join!(roundtrip(client, b"last"), echo);
    got
}
