//! Two independent lifecycles side by side in one process: no globals.

mod common;

use std::time::Duration;

use actix::Actor;
use actix_lifecycle::{BeginShutdown, Harness, LifecycleError, Snapshot, Start, WaitStopped};
use common::{echo, logger, metric, roundtrip};

#[actix::test]
async fn two_harnesses_run_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = prometheus::Registry::new();
    let a = Harness::builder()
        .logger(logger())
        .metrics(&metrics)
        .metrics_prefix("alpha")
        .drain_grace(Duration::from_millis(200))
        .tcp("e", "echo", echo())
        .build()
        .start();
    let b = Harness::builder()
        .logger(logger())
        .metrics(&metrics)
        .metrics_prefix("beta")
        .tcp("e", "echo", echo())
        .unix("u", dir.path().join("b.sock"), "echo", echo())
        .build()
        .start();
    let ia = a.send(Start).await.unwrap().unwrap();
    let ib = b.send(Start).await.unwrap().unwrap();
    assert_ne!(ia.tcp("e"), ib.tcp("e"));

    let mut ca = tokio::net::TcpStream::connect(ia.tcp("e").unwrap())
        .await
        .unwrap();
    let mut cb1 = tokio::net::TcpStream::connect(ib.tcp("e").unwrap())
        .await
        .unwrap();
    let mut cb2 = tokio::net::UnixStream::connect(ib.unix("u").unwrap())
        .await
        .unwrap();
    assert_eq!(roundtrip(&mut ca, b"a").await, b"a");
    assert_eq!(roundtrip(&mut cb1, b"b").await, b"b");
    assert_eq!(roundtrip(&mut cb2, b"c").await, b"c");

    assert_eq!(a.send(Snapshot).await.unwrap().live, 1);
    assert_eq!(b.send(Snapshot).await.unwrap().live, 2);
    assert_eq!(
        metric(
            &metrics,
            r#"alpha_connections{listener="e",protocol="echo"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"beta_connections{listener="e",protocol="echo"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"beta_connections{listener="u",protocol="echo"}"#
        ),
        Some(1.0)
    );

    // Stopping one leaves the other serving.
    a.send(BeginShutdown).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(20), a.send(WaitStopped))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(a.send(Snapshot).await.unwrap().live, 0);
    assert_eq!(roundtrip(&mut cb1, b"still here").await, b"still here");
    assert_eq!(roundtrip(&mut cb2, b"me too").await, b"me too");
    let snap_b = b.send(Snapshot).await.unwrap();
    assert_eq!(snap_b.live, 2);
    assert!(!snap_b.shut_down);
    assert_eq!(
        ib.lifecycle.shutdown_handle().phase(),
        actix_lifecycle::Phase::Running
    );
}

#[actix::test]
async fn the_same_prefix_twice_on_one_registry_is_a_clear_error() {
    let metrics = prometheus::Registry::new();
    let first = Harness::builder()
        .metrics(&metrics)
        .tcp("e", "echo", echo())
        .build()
        .start();
    let second = Harness::builder()
        .metrics(&metrics)
        .tcp("e", "echo", echo())
        .build()
        .start();
    first.send(Start).await.unwrap().unwrap();
    match second.send(Start).await.unwrap() {
        Err(e @ LifecycleError::Metrics { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("\"lifecycle\"") && msg.contains("another prefix"),
                "{msg}"
            );
        }
        other => panic!("expected a metrics error, got {other:?}"),
    }
    assert!(matches!(
        first.send(Start).await.unwrap(),
        Err(LifecycleError::AlreadyStarted)
    ));
}
