//! Registration racing with Shutdown, Snapshot and Done on several threads:
//! nothing registered after Shutdown escapes the abort, counts add up, and
//! Done resolves once every thread let go.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use actix_lifecycle::ConnectionRegistry;

#[actix::test]
async fn shutdown_racing_registrations_aborts_every_later_one() {
    const THREADS: usize = 4;
    let registry = ConnectionRegistry::builder().build().unwrap();
    let handle = registry.handle();
    let kind = handle.kind("p", "l");
    let start = Arc::new(Barrier::new(THREADS + 1));
    let stop_holding = Arc::new(AtomicBool::new(false));
    let stop_registering = Arc::new(AtomicBool::new(false));

    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let (handle, kind, start, stop_holding, stop_registering) = (
                handle.clone(),
                kind.clone(),
                start.clone(),
                stop_holding.clone(),
                stop_registering.clone(),
            );
            std::thread::spawn(move || {
                let shard = handle.new_shard();
                let mut held = Vec::new();
                start.wait();
                let mut registered = 0u64;
                let mut after_shutdown = 0u64;
                while !stop_registering.load(Ordering::Acquire) {
                    registered += 1;
                    let shut_before = handle.is_shut_down();
                    let guard = shard.register(&kind);
                    assert!(
                        !shut_before || guard.is_aborted(),
                        "registered after Shutdown but not aborted"
                    );
                    if shut_before {
                        after_shutdown += 1;
                    }
                    if registered % 100 == 0 {
                        // Some connections stay open; count those from
                        // before the Shutdown apart.
                        held.push((guard, shut_before));
                    }
                }
                while !stop_holding.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                // Everything still open was aborted by the Shutdown (or
                // registered after it).
                assert!(held.iter().all(|(g, _)| g.is_aborted()));
                let held_before = held.iter().filter(|(_, after)| !after).count() as u64;
                (held_before, registered, after_shutdown)
            })
        })
        .collect();

    start.wait();
    // Snapshots while the threads work never see more than was accepted.
    for _ in 0..20 {
        let snap = handle.snapshot();
        assert!(snap.live <= snap.accepted());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    handle.shutdown();
    let done = tokio::spawn(handle.done());
    tokio::time::sleep(Duration::from_millis(20)).await;
    stop_registering.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(!done.is_finished(), "held connections keep Done waiting");
    stop_holding.store(true, Ordering::Release);
    let (mut held_before, mut registered, mut after_shutdown) = (0, 0, 0);
    for w in workers {
        let (h, r, a) = w.join().unwrap();
        held_before += h;
        registered += r;
        after_shutdown += a;
    }
    assert!(
        after_shutdown > 0,
        "the threads kept registering after the Shutdown"
    );
    tokio::time::timeout(Duration::from_secs(20), done)
        .await
        .unwrap()
        .unwrap();

    let snap = handle.snapshot();
    assert_eq!(snap.live, 0);
    assert_eq!(snap.accepted(), registered);
    let aborted = snap.aborted();
    assert!(
        aborted >= held_before + after_shutdown && aborted <= registered,
        "aborted {aborted}: at least the {held_before} held open from before the Shutdown \
         and the {after_shutdown} registered after it, at most all {registered}"
    );
    assert_eq!(snap.kind("p", "l").unwrap().live, 0);
}
