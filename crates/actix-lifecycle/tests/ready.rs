//! `Lifecycle::ready`: resolves once every served listener holds its
//! socket, closes what nobody claimed, and fails with the listener's name
//! when one cannot start (which also stops the lifecycle, unless the
//! listener was told otherwise). `CloseUnclaimed` is safe whenever sent.

mod common;

use std::time::Duration;

use actix_lifecycle::{
    BrokerError, CloseUnclaimed, GetPhase, LifecycleError, ListenerError, OnFailure, Phase,
    WaitStopped,
};
use common::{echo, roundtrip, tcp};
use lifecycle_handoff::{ListenerSpec, PassedListener};

const LIMIT: Duration = Duration::from_secs(10);

#[actix::test]
async fn ready_reports_every_served_listener_and_closes_the_unclaimed() {
    let (a, a_addr) = tcp("a");
    let (b, b_addr) = tcp("b");
    let (spare, spare_addr) = tcp("spare");
    let lifecycle = common::start(vec![a, b, spare]);
    lifecycle.serve("a", "echo", echo());
    lifecycle.serve("b", "echo", echo());
    let ready = tokio::time::timeout(LIMIT, lifecycle.ready())
        .await
        .unwrap()
        .unwrap();
    let served: Vec<(&str, String)> = (ready.listeners.iter())
        .map(|l| (l.name.as_str(), l.address.to_string()))
        .collect();
    assert_eq!(
        served,
        vec![("a", a_addr.to_string()), ("b", b_addr.to_string())]
    );
    assert_eq!(ready.closed_unclaimed, 1);
    assert_eq!(ready.inventory.held(), 0);
    let spare_state = &ready.inventory.listeners[2];
    assert!(
        spare_state.closed && !spare_state.claimed,
        "{spare_state:?}"
    );
    // Both serve; the spare one is closed.
    for addr in [a_addr, b_addr] {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(roundtrip(&mut c, b"hi").await, b"hi");
    }
    assert!(tokio::net::TcpStream::connect(spare_addr).await.is_err());
}

#[actix::test]
async fn close_unclaimed_right_after_serve_leaves_the_served_listener_alone() {
    let (a, a_addr) = tcp("a");
    let (spare, _) = tcp("spare");
    let lifecycle = common::start(vec![a, spare]);
    lifecycle.serve("a", "echo", echo());
    // Before the listener actor even started: only the spare is closed.
    let closed = lifecycle.broker().send(CloseUnclaimed).await.unwrap();
    assert_eq!(closed, 1, "only the listener nobody serves is closed");
    let ready = tokio::time::timeout(LIMIT, lifecycle.ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ready.listeners.len(), 1);
    let mut c = tokio::net::TcpStream::connect(a_addr).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"hi").await, b"hi");
}

#[actix::test]
async fn a_listener_missing_from_the_inventory_fails_ready_and_stops_the_lifecycle() {
    let (a, _) = tcp("a");
    let lifecycle = common::start(vec![a]);
    lifecycle.serve("a", "echo", echo());
    lifecycle.serve("missing", "echo", echo());
    let err = tokio::time::timeout(LIMIT, lifecycle.ready())
        .await
        .unwrap()
        .unwrap_err();
    match &err {
        LifecycleError::ListenerStart {
            name,
            source:
                ListenerError::Broker {
                    source: BrokerError::UnknownListener { .. },
                    ..
                },
        } => assert_eq!(name, "missing"),
        other => panic!("expected ListenerStart(UnknownListener), got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("\"missing\"") && msg.contains("known: a"),
        "{msg}"
    );
    let outcome = tokio::time::timeout(LIMIT, lifecycle.coordinator().send(WaitStopped))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome.exit_code, 1,
        "a failed listener stops with status 1"
    );
}

#[actix::test]
async fn a_listener_told_to_only_log_leaves_the_lifecycle_running() {
    let (a, _) = tcp("a");
    let lifecycle = common::start(vec![a]);
    lifecycle.serve("a", "echo", echo());
    lifecycle
        .listener("missing", "echo", echo())
        .on_failure(OnFailure::LogOnly)
        .start();
    let err = tokio::time::timeout(LIMIT, lifecycle.ready())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, LifecycleError::ListenerStart { ref name, .. } if name == "missing"),
        "{err:?}"
    );
    // A stop request would have been sent before the failure was reported.
    let phase = lifecycle.coordinator().send(GetPhase).await.unwrap();
    assert_eq!(phase, Phase::Running);
}

#[actix::test]
async fn a_listener_closed_as_unclaimed_is_reported_as_such() {
    let (a, _) = tcp("a");
    let lifecycle = common::start(vec![a]);
    let ready = lifecycle.ready().await.unwrap();
    assert_eq!(ready.closed_unclaimed, 1);
    let err = lifecycle.take_listener("a", "http").await.unwrap_err();
    match &err {
        LifecycleError::ListenerStart {
            source:
                ListenerError::Broker {
                    source: BrokerError::ClosedUnclaimed { .. },
                    ..
                },
            ..
        } => {}
        other => panic!("expected ClosedUnclaimed, got {other:?}"),
    }
    assert!(err.to_string().contains("closed as unclaimed"), "{err}");
}

#[actix::test]
async fn a_listener_taken_for_another_server_counts_as_served() {
    let (web, web_addr) = tcp("web");
    let lifecycle = common::start(vec![web]);
    let passed = lifecycle.take_listener("web", "http").await.unwrap();
    assert_eq!(passed.spec.name(), "web");
    let ready = lifecycle.ready().await.unwrap();
    assert_eq!(ready.closed_unclaimed, 0);
    assert_eq!(ready.listeners.len(), 1);
    assert_eq!(ready.listeners[0].protocol, "http");
    assert_eq!(ready.listeners[0].address.to_string(), web_addr.to_string());
}

#[actix::test]
async fn metrics_text_exposes_the_gauges_without_a_prometheus_dependency() {
    let (a, a_addr) = tcp("a");
    let lifecycle = common::start(vec![a]);
    lifecycle.serve("a", "echo", echo());
    lifecycle.ready().await.unwrap();
    let mut c = tokio::net::TcpStream::connect(a_addr).await.unwrap();
    assert_eq!(roundtrip(&mut c, b"hi").await, b"hi");
    let text = lifecycle.metrics_text();
    assert!(
        text.contains("lifecycle_connections{listener=\"a\",protocol=\"echo\"} 1"),
        "{text}"
    );
}

#[actix::test]
async fn a_socket_that_is_not_listening_fails_ready_with_the_typed_check() {
    // Bound but never listening: `validate_listener` refuses it, and the
    // error keeps lifecycle-handoff's own variant (and its fix).
    let quiet = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    quiet
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = quiet.local_addr().unwrap().as_socket().unwrap();
    let other = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    other
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let other_addr = other.local_addr().unwrap().as_socket().unwrap();
    let lifecycle = common::start(vec![
        PassedListener {
            spec: ListenerSpec::tcp("quiet", addr),
            fd: quiet.into(),
        },
        PassedListener {
            spec: ListenerSpec::tcp("taken", other_addr),
            fd: other.into(),
        },
    ]);
    let taken = lifecycle.take_listener("taken", "http").await.unwrap_err();
    lifecycle.serve("quiet", "echo", echo());
    let served = tokio::time::timeout(LIMIT, lifecycle.ready())
        .await
        .unwrap()
        .unwrap_err();
    for (err, name) in [(&taken, "taken"), (&served, "quiet")] {
        match err {
            LifecycleError::ListenerStart {
                name: failed,
                source:
                    ListenerError::Invalid {
                        name: invalid,
                        source,
                    },
            } if matches!(**source, lifecycle_handoff::Error::NotListening { .. }) => {
                assert_eq!((failed.as_str(), invalid.as_str()), (name, name))
            }
            other => panic!("expected ListenerStart(Invalid(NotListening)), got {other:?}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("listener {name:?}"))
                && msg.contains("SO_ACCEPTCONN")
                && msg.contains("pass the listening socket"),
            "{msg}"
        );
    }
}
