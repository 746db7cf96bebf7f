//! Register/unregister counts and gauges under concurrent TCP and Unix
//! connections, through the harness.

mod common;

use std::time::Duration;

use actix::Actor;
use actix_lifecycle::{Done, Harness, Snapshot, Start, Unregister};
use common::{echo, eventually, logger, metric, roundtrip};

#[actix::test]
async fn counts_and_gauges_follow_concurrent_tcp_and_unix_connections() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = prometheus::Registry::new();
    let harness = Harness::builder()
        .logger(logger())
        .metrics(&metrics)
        .tcp("plain", "echo", echo())
        .unix("local", dir.path().join("echo.sock"), "echo-unix", echo())
        .build()
        .start();
    let info = harness.send(Start).await.unwrap().unwrap();
    let tcp = info.tcp("plain").unwrap();
    let unix = info.unix("local").unwrap().to_path_buf();

    // Before any connection, no label set exists yet.
    assert_eq!(metric(&metrics, "lifecycle_connections{"), None);

    const N: usize = 40;
    let mut tcp_clients = Vec::new();
    let mut unix_clients = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..N {
        let unix = unix.clone();
        tasks.push(tokio::spawn(async move {
            let mut t = tokio::net::TcpStream::connect(tcp).await.unwrap();
            let mut u = tokio::net::UnixStream::connect(unix).await.unwrap();
            let msg = format!("hello {i}");
            assert_eq!(roundtrip(&mut t, msg.as_bytes()).await, msg.as_bytes());
            assert_eq!(roundtrip(&mut u, msg.as_bytes()).await, msg.as_bytes());
            (t, u)
        }));
    }
    for t in tasks {
        let (t, u) = t.await.unwrap();
        tcp_clients.push(t);
        unix_clients.push(u);
    }

    let snap = harness.send(Snapshot).await.unwrap();
    assert_eq!(snap.live, 2 * N as u64);
    assert_eq!(snap.kind("echo", "plain").unwrap().live, N as u64);
    assert_eq!(snap.kind("echo-unix", "local").unwrap().live, N as u64);
    assert_eq!(snap.entries.len(), 2 * N);
    assert!(
        snap.entries.windows(2).all(|w| w[0].age >= w[1].age),
        "oldest first"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"lifecycle_connections{listener="plain",protocol="echo"}"#
        ),
        Some(N as f64)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"lifecycle_connections{listener="local",protocol="echo-unix"}"#
        ),
        Some(N as f64)
    );

    // Close half of the TCP clients: the server sees EOF and unregisters.
    tcp_clients.truncate(N / 2);
    let h = harness.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let h = h.clone();
            async move {
                h.send(Snapshot)
                    .await
                    .unwrap()
                    .kind("echo", "plain")
                    .unwrap()
                    .live
                    == (N / 2) as u64
            }
        })
        .await
    );
    assert_eq!(
        metric(
            &metrics,
            r#"lifecycle_connections{listener="plain",protocol="echo"}"#
        ),
        Some((N / 2) as f64)
    );

    drop(tcp_clients);
    drop(unix_clients);
    tokio::time::timeout(Duration::from_secs(10), harness.send(Done))
        .await
        .expect("every connection unregisters once its client closes")
        .unwrap();
    let snap = harness.send(Snapshot).await.unwrap();
    assert_eq!(snap.live, 0);
    assert_eq!(snap.accepted(), 2 * N as u64);
    assert_eq!(snap.aborted(), 0);
    assert_eq!(
        metric(
            &metrics,
            r#"lifecycle_connections{listener="plain",protocol="echo"}"#
        ),
        Some(0.0),
        "the label set stays, at zero"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"lifecycle_connections_accepted_total{listener="plain",protocol="echo"}"#
        ),
        Some(N as f64)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"lifecycle_connection_duration_seconds_count{listener="local",protocol="echo-unix"}"#
        ),
        Some(N as f64)
    );
}

#[actix::test]
async fn double_and_unknown_unregister_are_harmless() {
    let registry = actix_lifecycle::ConnectionRegistry::builder()
        .logger(logger())
        .build()
        .unwrap();
    let handle = registry.handle();
    let addr = registry.start();
    let kind = handle.kind("smtp", "mx");
    let shard = handle.new_shard();
    let a = shard.register(&kind);
    let b = shard.register(&kind);
    assert_eq!(handle.live(), 2);

    // Unregister `a` by message, then drop its guard: counted once.
    assert!(addr.send(Unregister { id: a.id() }).await.unwrap());
    assert!(
        !addr.send(Unregister { id: a.id() }).await.unwrap(),
        "second unregister is a no-op"
    );
    drop(a);
    assert_eq!(handle.live(), 1);
    assert!(
        !addr.send(Unregister { id: 987_654_321 }).await.unwrap(),
        "unknown id ignored"
    );
    assert!(
        !addr.send(Unregister { id: u64::MAX }).await.unwrap(),
        "unknown shard ignored"
    );
    assert_eq!(handle.live(), 1);
    let snap = handle.snapshot();
    assert_eq!(
        snap.kind("smtp", "mx").unwrap().live,
        1,
        "never negative, never double-counted"
    );
    drop(b);
    assert_eq!(handle.live(), 0);
    assert_eq!(handle.snapshot().kind("smtp", "mx").unwrap().live, 0);
    assert_eq!(handle.snapshot().accepted(), 2);
}
