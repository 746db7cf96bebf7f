//! The harness API itself: messages before start, bind errors, the info it
//! replies with.

mod common;

use actix::Actor;
use actix_lifecycle::{
    BeginShutdown, Done, GetPhase, Harness, LifecycleError, Phase, Snapshot, Start, WaitStopped,
};
use common::{echo, logger, metric, roundtrip};

#[actix::test]
async fn an_unstarted_harness_answers_as_an_empty_service() {
    let h = Harness::builder().tcp("e", "echo", echo()).build().start();
    assert_eq!(h.send(Snapshot).await.unwrap().live, 0);
    h.send(Done).await.unwrap();
    h.send(BeginShutdown).await.unwrap();
    assert_eq!(h.send(GetPhase).await.unwrap(), Phase::Running);
    assert_eq!(h.send(WaitStopped).await.unwrap().exit_code, 0);
}

#[actix::test]
async fn a_listener_that_cannot_be_bound_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::builder()
        .logger(logger())
        .unix(
            "local",
            dir.path().join("missing-dir").join("s.sock"),
            "echo",
            echo(),
        )
        .build()
        .start();
    match h.send(Start).await.unwrap() {
        Err(e @ LifecycleError::Bind { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("\"local\"") && msg.contains("missing-dir"),
                "{msg}"
            );
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
}

#[actix::test]
async fn start_replies_with_bound_addresses_and_the_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let h = Harness::builder()
        .logger(logger())
        .tcp("t", "echo", echo())
        .unix("u", &path, "echo", echo())
        .build()
        .start();
    let info = h.send(Start).await.unwrap().unwrap();
    let tcp = info.tcp("t").unwrap();
    assert!(tcp.ip().is_loopback());
    assert_ne!(tcp.port(), 0, "the bound port, not 0");
    assert_eq!(info.unix("u"), Some(path.as_path()));
    assert_eq!(info.tcp("u"), None);
    assert_eq!(info.address("nope"), None);
    let mut c = tokio::net::TcpStream::connect(tcp).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"x").await, b"x");
    assert_eq!(info.lifecycle.connections().live(), 1);
    assert_eq!(info.lifecycle.shutdown_handle().phase(), Phase::Running);
}

#[test]
fn starting_outside_a_system_is_an_error_not_a_panic() {
    let err = actix_lifecycle::Lifecycle::builder(Default::default())
        .start()
        .unwrap_err();
    assert!(matches!(err, LifecycleError::NoSystem), "{err}");
    assert!(err.to_string().contains("System::new()"));
}

/// The phases whose `lifecycle_phase` sample is 1, after checking that
/// every phase has a sample.
fn current_phases(registry: &prometheus::Registry) -> Vec<&'static str> {
    let mut ones = Vec::new();
    for phase in Phase::ALL {
        let sample = format!("lifecycle_phase{{phase=\"{phase}\"}}");
        match metric(registry, &sample) {
            Some(1.0) => ones.push(phase.as_str()),
            Some(_) => {}
            None => panic!("no sample {sample}"),
        }
    }
    ones
}

#[actix::test]
async fn a_lame_duck_keeps_serving_new_connections_and_shows_in_the_metrics() {
    let h = Harness::builder()
        .logger(logger())
        .tcp("e", "echo", echo())
        .lame_duck(std::time::Duration::from_secs(3600))
        .build()
        .start();
    let info = h.send(Start).await.unwrap().unwrap();
    let metrics = info.lifecycle.metrics().clone();
    assert_eq!(current_phases(&metrics), ["running"]);

    h.send(BeginShutdown).await.unwrap();
    assert_eq!(h.send(GetPhase).await.unwrap(), Phase::LameDuck);
    assert_eq!(current_phases(&metrics), ["lame_duck"]);
    let handle = info.lifecycle.shutdown_handle();
    assert!(handle.is_shutting_down() && !handle.is_draining());
    // Accepted and served as before the shutdown.
    let mut c = tokio::net::TcpStream::connect(info.tcp("e").unwrap())
        .await
        .unwrap();
    assert_eq!(roundtrip(&mut c, b"late").await, b"late");

    info.lifecycle
        .coordinator()
        .send(actix_lifecycle::EndLameDuck)
        .await
        .unwrap();
    assert!(handle.is_draining());
    drop(c);
    assert_eq!(h.send(WaitStopped).await.unwrap().exit_code, 0);
    assert_eq!(current_phases(&metrics), ["stopped"]);
}
