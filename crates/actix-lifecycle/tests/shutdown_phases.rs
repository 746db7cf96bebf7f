//! Shutdown phases: order, graces (generous bounds, no speed asserts),
//! idle stop, early drain end, abort grace expiry, second-signal policy,
//! listeners stopping at the configured phase.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use actix_lifecycle::{
    BeginShutdown, ConnHandler, GetPhase, Harness, Lifecycle, Phase, ShutdownHandle,
    SignalReceived, Snapshot, Start, StopOutcome, WaitStopped,
};
use common::{echo, eventually, logger, roundtrip};
use lifecycle_handoff::{Inventory, ListenerSpec, PassedListener};
use tokio::io::AsyncReadExt;

const LIMIT: Duration = Duration::from_secs(20);

/// Records when each phase is reached.
fn watch(handle: ShutdownHandle) -> Arc<Mutex<Vec<(Phase, Instant)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    actix::spawn(async move {
        handle.draining().await;
        s.lock().unwrap().push((Phase::Draining, Instant::now()));
        handle.aborting().await;
        s.lock().unwrap().push((Phase::Aborting, Instant::now()));
        handle.stopped().await;
        s.lock().unwrap().push((Phase::Stopped, Instant::now()));
    });
    seen
}

/// Waits until `n` connections are live.
async fn wait_live(harness: &Addr<Harness>, n: u64) {
    let h = harness.clone();
    assert!(
        eventually(LIMIT, || {
            let h = h.clone();
            async move { h.send(Snapshot).await.unwrap().live == n }
        })
        .await,
        "never {n} live connection(s)"
    );
}

/// Begins the shutdown and waits for the stop.
async fn stop(harness: &Addr<Harness>) -> StopOutcome {
    harness.send(BeginShutdown).await.unwrap();
    tokio::time::timeout(LIMIT, harness.send(WaitStopped))
        .await
        .unwrap()
        .unwrap()
}

#[actix::test]
async fn an_idle_service_stops_at_once() {
    let harness = Harness::builder()
        .logger(logger())
        .tcp("e", "echo", echo())
        .drain_grace(Duration::from_secs(30))
        .abort_grace(Duration::from_secs(30))
        .build()
        .start();
    let info = harness.send(Start).await.unwrap().unwrap();
    let seen = watch(info.lifecycle.shutdown_handle());
    assert_eq!(harness.send(GetPhase).await.unwrap(), Phase::Running);
    let outcome = stop(&harness).await;
    assert_eq!(outcome.exit_code, 0);
    assert!(outcome.left_open.is_empty());
    assert!(
        outcome.elapsed < Duration::from_secs(30),
        "no grace is waited for when nothing is open: {:?}",
        outcome.elapsed
    );
    assert_eq!(harness.send(GetPhase).await.unwrap(), Phase::Stopped);
    tokio::task::yield_now().await;
    let phases: Vec<Phase> = seen.lock().unwrap().iter().map(|(p, _)| *p).collect();
    assert_eq!(phases, [Phase::Draining, Phase::Aborting, Phase::Stopped]);
}

#[actix::test]
async fn phases_run_in_order_and_a_silent_client_is_aborted_after_the_drain_grace() {
    let drain = Duration::from_millis(300);
    let harness = Harness::builder()
        .logger(logger())
        .tcp("e", "echo", echo())
        .drain_grace(drain)
        .abort_grace(Duration::from_secs(5))
        .build()
        .start();
    let info = harness.send(Start).await.unwrap().unwrap();
    let seen = watch(info.lifecycle.shutdown_handle());
    let mut client = tokio::net::TcpStream::connect(info.tcp("e").unwrap())
        .await
        .unwrap();
    assert_eq!(roundtrip(&mut client, b"x").await, b"x");

    let outcome = stop(&harness).await;
    assert_eq!(outcome.exit_code, 0);
    assert!(
        outcome.left_open.is_empty(),
        "the echo handler ends at the abort"
    );
    tokio::task::yield_now().await;
    let seen = seen.lock().unwrap().clone();
    let phases: Vec<Phase> = seen.iter().map(|(p, _)| *p).collect();
    assert_eq!(phases, [Phase::Draining, Phase::Aborting, Phase::Stopped]);
    let drained_for = seen[1].1 - seen[0].1;
    assert!(
        drained_for >= drain,
        "aborting waited for the drain grace: {drained_for:?}"
    );
    assert!(
        seen[2].1 - seen[1].1 < Duration::from_secs(5),
        "stopped as soon as the aborted connection closed, before the abort grace"
    );
    // The client sees its connection closed.
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(LIMIT, client.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let snap = harness.send(Snapshot).await.unwrap();
    assert_eq!(snap.aborted(), 1);
}

#[actix::test]
async fn draining_ends_early_when_handlers_finish() {
    // Handlers that say goodbye as soon as draining starts.
    let polite = ConnHandler::new(|conn| async move {
        conn.shutdown().draining().await;
        drop(conn);
    });
    let harness = Harness::builder()
        .logger(logger())
        .tcp("p", "polite", polite)
        .drain_grace(Duration::from_secs(60))
        .abort_grace(Duration::from_secs(60))
        .build()
        .start();
    let info = harness.send(Start).await.unwrap().unwrap();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            tokio::net::TcpStream::connect(info.tcp("p").unwrap())
                .await
                .unwrap(),
        );
    }
    wait_live(&harness, 3).await;
    let outcome = stop(&harness).await;
    assert!(
        outcome.elapsed < Duration::from_secs(60),
        "did not wait for the drain grace"
    );
    let snap = harness.send(Snapshot).await.unwrap();
    assert_eq!(snap.aborted(), 0, "nothing was left to abort");
}

#[actix::test]
async fn the_abort_grace_expires_and_what_is_left_is_reported() {
    // A handler that holds its connection and ignores the stream.
    let stubborn = ConnHandler::new(|conn| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(conn);
    });
    let (drain, abort) = (Duration::from_millis(100), Duration::from_millis(300));
    let harness = Harness::builder()
        .logger(logger())
        .tcp("s", "stubborn", stubborn)
        .drain_grace(drain)
        .abort_grace(abort)
        .build()
        .start();
    let info = harness.send(Start).await.unwrap().unwrap();
    let _client = tokio::net::TcpStream::connect(info.tcp("s").unwrap())
        .await
        .unwrap();
    wait_live(&harness, 1).await;
    let outcome = stop(&harness).await;
    assert_eq!(outcome.exit_code, 0);
    assert!(
        outcome.elapsed >= drain + abort,
        "both graces ran out: {:?}",
        outcome.elapsed
    );
    assert_eq!(outcome.left_open.len(), 1);
    assert!(outcome.left_open[0].aborted);
    assert_eq!(&*outcome.left_open[0].protocol, "stubborn");
}

fn one_listener() -> (Inventory, std::net::SocketAddr) {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let inventory = Inventory {
        listeners: vec![PassedListener {
            spec: ListenerSpec::tcp("e", addr),
            fd: tcp.into(),
        }],
        files: vec![],
    };
    (inventory, addr)
}

#[actix::test]
async fn a_second_signal_forces_exit_through_the_policy() {
    let forced = Arc::new(Mutex::new(Vec::new()));
    let f = forced.clone();
    let (inventory, addr) = one_listener();
    let lifecycle = Lifecycle::builder(inventory)
        .logger(logger())
        .handle_signals(false)
        .stop_system(false)
        .drain_grace(Duration::from_secs(60))
        .on_force_exit(move |code| f.lock().unwrap().push(code))
        .start()
        .unwrap();
    lifecycle.serve("e", "echo", echo());
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(roundtrip(&mut client, b"x").await, b"x");

    let coordinator = lifecycle.coordinator();
    coordinator.send(BeginShutdown).await.unwrap();
    coordinator.send(BeginShutdown).await.unwrap();
    assert!(
        forced.lock().unwrap().is_empty(),
        "a repeated message does not force"
    );
    assert_eq!(coordinator.send(GetPhase).await.unwrap(), Phase::Draining);

    coordinator
        .send(SignalReceived {
            signal: libc::SIGTERM,
        })
        .await
        .unwrap();
    assert_eq!(
        *forced.lock().unwrap(),
        vec![128 + libc::SIGTERM],
        "a signal while draining forces"
    );
    coordinator
        .send(SignalReceived {
            signal: libc::SIGINT,
        })
        .await
        .unwrap();
    assert_eq!(forced.lock().unwrap().len(), 2);
    assert!(
        forced.lock().unwrap().iter().all(|c| *c != 0),
        "forced exits are non-zero"
    );
}

#[actix::test]
async fn listeners_keep_or_stop_accepting_while_draining_as_configured() {
    for stop_at in [Phase::Draining, Phase::Aborting] {
        // Each handler reports whether it saw the draining phase.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let reporter = ConnHandler::new(move |conn| {
            let tx = tx.clone();
            async move {
                tx.send(conn.shutdown().is_draining()).unwrap();
                conn.shutdown().aborting().await;
                drop(conn);
            }
        });
        let harness = Harness::builder()
            .logger(logger())
            .tcp("r", "report", reporter)
            .drain_grace(Duration::from_secs(60))
            .stop_accepting_at(stop_at)
            .build()
            .start();
        let info = harness.send(Start).await.unwrap().unwrap();
        let addr = info.tcp("r").unwrap();
        let _held = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(rx.recv().await, Some(false));
        harness.send(BeginShutdown).await.unwrap();
        assert_eq!(harness.send(GetPhase).await.unwrap(), Phase::Draining);

        if stop_at == Phase::Draining {
            let refused = eventually(LIMIT, || async move {
                tokio::net::TcpStream::connect(addr).await.is_err()
            })
            .await;
            assert!(refused, "the listening socket closes when draining starts");
        } else {
            let _late = tokio::net::TcpStream::connect(addr).await.unwrap();
            assert_eq!(
                rx.recv().await,
                Some(true),
                "accepted while draining, handler sees it"
            );
        }
    }
}
