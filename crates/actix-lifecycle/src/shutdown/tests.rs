use std::sync::Arc;

use super::*;
use crate::registry::ConnectionRegistry;

fn coordinator(drain: Duration) -> (ShutdownCoordinator, RegistryHandle) {
    let registry = ConnectionRegistry::builder().build().unwrap();
    let handle = registry.handle();
    let c = ShutdownCoordinator::builder(handle.clone())
        .handle_signals(false)
        .stop_system(false)
        .drain_grace(drain)
        .abort_grace(Duration::from_secs(60))
        .build();
    (c, handle)
}

#[actix::test]
async fn many_waiters_get_the_same_outcome_before_and_after_the_stop() {
    let (c, registry) = coordinator(Duration::from_secs(60));
    let handle = c.handle();
    let addr = c.start();
    let guard = registry.new_shard().register(&registry.kind("p", "l"));
    let early: Vec<_> = (0..5).map(|_| addr.send(WaitStopped)).collect();
    addr.send(BeginShutdown).await.unwrap();
    assert_eq!(addr.send(GetPhase).await.unwrap(), Phase::Draining);
    assert_eq!(handle.phase(), Phase::Draining);
    drop(guard); // the last connection closes: the rest goes at once
    for w in early {
        let outcome = w.await.unwrap();
        assert_eq!(outcome.exit_code, 0);
        assert!(outcome.left_open.is_empty());
    }
    assert_eq!(handle.phase(), Phase::Stopped);
    let late = addr.send(WaitStopped).await.unwrap();
    assert_eq!(late.exit_code, 0);
    assert!(registry.is_shut_down(), "Aborting shut the registry down");
}

#[actix::test]
async fn a_signal_after_the_stop_does_not_force() {
    let forced = Arc::new(std::sync::Mutex::new(0));
    let f = forced.clone();
    let (c, _registry) = coordinator(Duration::from_secs(60));
    let c = ShutdownCoordinator {
        force_exit: Arc::new(move |_| *f.lock().unwrap() += 1),
        ..c
    };
    let addr = c.start();
    addr.send(SignalReceived {
        signal: libc::SIGTERM,
    })
    .await
    .unwrap();
    assert_eq!(
        addr.send(GetPhase).await.unwrap(),
        Phase::Stopped,
        "idle: stopped at once"
    );
    addr.send(SignalReceived {
        signal: libc::SIGTERM,
    })
    .await
    .unwrap();
    assert_eq!(*forced.lock().unwrap(), 0);
}

/// Paused-time durations: tokio timers round up to the millisecond.
fn assert_about(elapsed: Duration, expected: Duration, what: &str) {
    assert!(
        elapsed >= expected && elapsed <= expected + Duration::from_millis(10),
        "{what}: {elapsed:?}, expected {expected:?}"
    );
}

fn with_lame_duck(
    lame_duck: Duration,
    forced: Arc<std::sync::Mutex<Vec<i32>>>,
) -> (ShutdownCoordinator, RegistryHandle) {
    let registry = ConnectionRegistry::builder().build().unwrap();
    let handle = registry.handle();
    let c = ShutdownCoordinator::builder(handle.clone())
        .handle_signals(false)
        .stop_system(false)
        .lame_duck(lame_duck)
        .drain_grace(Duration::from_secs(3))
        .abort_grace(Duration::from_secs(1))
        .on_force_exit(move |code| forced.lock().unwrap().push(code))
        .build();
    (c, handle)
}

#[actix::test]
async fn lame_duck_serves_until_it_ends_then_drains_and_the_stop_is_bounded() {
    tokio::time::pause();
    let forced = Arc::default();
    let (c, registry) = with_lame_duck(Duration::from_secs(5), Arc::clone(&forced));
    let handle = c.handle();
    let addr = c.start();
    // A connection that never closes, so every grace runs in full.
    let _guard = registry.new_shard().register(&registry.kind("p", "l"));
    let began = tokio::time::Instant::now();
    addr.send(BeginShutdown).await.unwrap();
    assert_eq!(handle.phase(), Phase::LameDuck);
    assert!(handle.is_shutting_down() && !handle.is_draining());
    assert!(!registry.is_shut_down());

    handle.draining().await;
    assert_about(
        began.elapsed(),
        Duration::from_secs(5),
        "draining after the lame duck",
    );
    let outcome = addr.send(WaitStopped).await.unwrap();
    assert_about(
        began.elapsed(),
        Duration::from_secs(5 + 3 + 1),
        "bounded by lame duck + drain grace + abort grace",
    );
    assert_eq!(outcome.exit_code, 0);
    assert_eq!(outcome.left_open.len(), 1);
    assert!(forced.lock().unwrap().is_empty());
}

#[actix::test]
async fn a_second_signal_in_the_lame_duck_drains_and_a_third_forces() {
    tokio::time::pause();
    let forced = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c, registry) = with_lame_duck(Duration::from_secs(60), Arc::clone(&forced));
    let handle = c.handle();
    let addr = c.start();
    let _guard = registry.new_shard().register(&registry.kind("p", "l"));
    let term = SignalReceived {
        signal: libc::SIGTERM,
    };
    let began = tokio::time::Instant::now();
    addr.send(term).await.unwrap();
    assert_eq!(addr.send(GetPhase).await.unwrap(), Phase::LameDuck);
    addr.send(BeginShutdown).await.unwrap();
    assert_eq!(handle.phase(), Phase::LameDuck, "a message does not end it");

    addr.send(term).await.unwrap();
    assert_eq!(addr.send(GetPhase).await.unwrap(), Phase::Draining);
    assert_eq!(began.elapsed(), Duration::ZERO, "at once");
    assert!(forced.lock().unwrap().is_empty(), "no forced exit");

    addr.send(term).await.unwrap();
    assert_eq!(*forced.lock().unwrap(), [128 + libc::SIGTERM]);

    let outcome = addr.send(WaitStopped).await.unwrap();
    assert_about(
        began.elapsed(),
        Duration::from_secs(3 + 1),
        "the lame duck is over",
    );
    assert_eq!(outcome.exit_code, 0);
}

#[actix::test]
async fn end_lame_duck_moves_on_and_is_ignored_elsewhere() {
    tokio::time::pause();
    let (c, _registry) = with_lame_duck(Duration::from_secs(60), Arc::default());
    let addr = c.start();
    addr.send(EndLameDuck).await.unwrap();
    assert_eq!(addr.send(GetPhase).await.unwrap(), Phase::Running);
    addr.send(BeginShutdown).await.unwrap();
    assert_eq!(addr.send(GetPhase).await.unwrap(), Phase::LameDuck);
    addr.send(EndLameDuck).await.unwrap();
    assert_eq!(
        addr.send(GetPhase).await.unwrap(),
        Phase::Stopped,
        "idle: through draining to stopped at once"
    );
}
