//! Abort is persistent: after the registry's Shutdown every read returns
//! end-of-file and every write fails, including ones started later and
//! ones already waiting; a registration after Shutdown is aborted at once.

mod common;

use std::io::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_lifecycle::{ConnHandler, Harness, HarnessInfo, Shutdown, Snapshot, Start};
use common::{eventually, logger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

#[derive(Debug)]
enum Seen {
    Greeting(Vec<u8>),
    PendingReadWoken(std::io::Result<usize>),
    WriteAfterAbort(std::io::Result<()>),
    FlushAfterAbort(ErrorKind),
    LaterRead(std::io::Result<usize>),
    Aborted(bool),
}

/// A harness serving `handler` on one TCP listener `t`, started.
async fn serve(handler: ConnHandler) -> (Addr<Harness>, HarnessInfo) {
    let harness = Harness::builder()
        .logger(logger())
        .tcp("t", "test", handler)
        .build()
        .start();
    let info = harness.send(Start).await.unwrap().unwrap();
    (harness, info)
}

#[actix::test]
async fn reads_end_and_writes_fail_persistently_after_abort() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Told once the client has sent more after the abort.
    let client_wrote = Arc::new(Notify::new());
    let wrote = Arc::clone(&client_wrote);
    let handler = ConnHandler::new(move |mut conn| {
        let (tx, wrote) = (tx.clone(), Arc::clone(&wrote));
        async move {
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).await.unwrap();
            tx.send(Seen::Greeting(buf.to_vec())).unwrap();
            // The client is silent now: this read waits until the abort.
            let mut buf = [0u8; 64];
            tx.send(Seen::PendingReadWoken(conn.read(&mut buf).await))
                .unwrap();
            tx.send(Seen::WriteAfterAbort(conn.write_all(b"too late").await))
                .unwrap();
            tx.send(Seen::FlushAfterAbort(
                conn.flush().await.unwrap_err().kind(),
            ))
            .unwrap();
            // The client sends more after the abort; a later read must
            // still not see it (unlike a deadline that the next I/O resets).
            wrote.notified().await;
            tx.send(Seen::LaterRead(conn.read(&mut buf).await)).unwrap();
            tx.send(Seen::Aborted(conn.is_aborted())).unwrap();
        }
    });
    let (harness, info) = serve(handler).await;
    let mut client = tokio::net::TcpStream::connect(info.tcp("t").unwrap())
        .await
        .unwrap();
    client.write_all(b"hello").await.unwrap();
    assert!(matches!(rx.recv().await, Some(Seen::Greeting(g)) if g == b"hello"));

    let aborted = info.lifecycle.registry().send(Shutdown).await.unwrap();
    assert_eq!(aborted, 1);
    match rx.recv().await {
        Some(Seen::PendingReadWoken(Ok(0))) => {}
        other => panic!("a pending read must be woken with end-of-file, got {other:?}"),
    }
    client
        .write_all(b"data sent after the abort")
        .await
        .unwrap();
    // On loopback the bytes are in the server's receive queue once written.
    client_wrote.notify_one();
    match rx.recv().await {
        Some(Seen::WriteAfterAbort(Err(e))) => assert_eq!(e.kind(), ErrorKind::ConnectionAborted),
        other => panic!("a write after abort must fail, got {other:?}"),
    }
    assert!(matches!(
        rx.recv().await,
        Some(Seen::FlushAfterAbort(ErrorKind::ConnectionAborted))
    ));
    match rx.recv().await {
        Some(Seen::LaterRead(Ok(0))) => {}
        other => panic!("a later read must still see end-of-file, got {other:?}"),
    }
    assert!(matches!(rx.recv().await, Some(Seen::Aborted(true))));

    // The handler returned: the socket is closed, the client sees EOF (or a
    // reset, since it sent data the server never read), and nothing of
    // "too late" ever reached it.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
        .await
        .expect("the server closes the socket");
    assert!(
        rest.is_empty(),
        "no byte written after the abort reached the client: {rest:?}"
    );
    let snap = harness.send(Snapshot).await.unwrap();
    assert_eq!(snap.live, 0);
    assert_eq!(snap.aborted(), 1);
}

#[actix::test]
async fn a_pending_write_is_woken_by_abort() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = ConnHandler::new(move |mut conn| {
        let tx = tx.clone();
        async move {
            // The client never reads: fill the socket buffers until the
            // write waits, then the abort must wake it with an error.
            let chunk = vec![b'x'; 64 * 1024];
            let mut written = 0usize;
            let res = loop {
                match conn.write(&chunk).await {
                    Ok(n) => {
                        written += n;
                        if written == chunk.len() * 4 {
                            tx.send(Ok(0)).unwrap(); // buffers are filling up
                        }
                    }
                    Err(e) => break e,
                }
            };
            tx.send(Err(res.kind())).unwrap();
        }
    });
    let (_harness, info) = serve(handler).await;
    let _client = tokio::net::TcpStream::connect(info.tcp("t").unwrap())
        .await
        .unwrap();
    assert_eq!(rx.recv().await, Some(Ok(0)));
    // Give the writer time to block on the full buffers (not asserted:
    // the abort must end the write whether or not it was waiting yet).
    tokio::time::sleep(Duration::from_millis(100)).await;
    info.lifecycle.connections().shutdown();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap();
    assert_eq!(got, Some(Err(ErrorKind::ConnectionAborted)));
}

#[actix::test]
async fn registration_after_shutdown_is_aborted_at_once_and_counted() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = ConnHandler::new(move |mut conn| {
        let tx = tx.clone();
        async move {
            let aborted_on_arrival = conn.is_aborted();
            let mut buf = [0u8; 8];
            tx.send((aborted_on_arrival, conn.read(&mut buf).await.ok()))
                .unwrap();
        }
    });
    let (harness, info) = serve(handler).await;
    // Shut the registry down with nothing open (the listener keeps
    // accepting: the phase is still Running).
    assert_eq!(info.lifecycle.registry().send(Shutdown).await.unwrap(), 0);

    let mut client = tokio::net::TcpStream::connect(info.tcp("t").unwrap())
        .await
        .unwrap();
    client.write_all(b"ignored").await.unwrap();
    let (aborted, read) = rx.recv().await.unwrap();
    assert!(aborted, "registered after Shutdown: aborted at once");
    assert_eq!(
        read,
        Some(0),
        "its first read is end-of-file even with data waiting"
    );
    let h = harness.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let h = h.clone();
            async move { h.send(Snapshot).await.unwrap().live == 0 }
        })
        .await
    );
    let snap = harness.send(Snapshot).await.unwrap();
    assert_eq!(snap.accepted(), 1);
    assert_eq!(snap.aborted(), 1, "counted as aborted");
    assert!(snap.shut_down);

    // The same through a shard directly.
    let handle = info.lifecycle.connections();
    let guard = handle.new_shard().register(&handle.kind("test", "t"));
    assert!(guard.is_aborted());
    assert_eq!(handle.snapshot().aborted(), 2);
}
