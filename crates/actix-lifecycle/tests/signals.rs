//! Real signals: SIGTERM stops the service cleanly with exit status 0, and
//! a second signal during the shutdown goes to the force-exit policy.
//!
//! Signal handlers are process-wide, so this file holds a single test.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_lifecycle::{Lifecycle, Phase};
use common::{echo, eventually, logger};
use lifecycle_handoff::{Inventory, ListenerSpec, PassedListener};

fn kill(signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(std::process::id().to_string())
        .status()
        .expect("kill(1) runs");
    assert!(status.success());
}

fn inventory() -> (Inventory, std::net::SocketAddr) {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let spec = ListenerSpec::tcp("e", addr);
    (
        Inventory {
            listeners: vec![PassedListener {
                spec,
                fd: tcp.into(),
            }],
            files: vec![],
        },
        addr,
    )
}

#[test]
fn sigterm_stops_with_status_zero_and_a_second_signal_forces_exit() {
    // 1. Idle: SIGTERM → all phases at once → System exits 0. The signal
    //    arrives synchronously right after `start()`, before the
    //    coordinator actor has run at all: `start()` has installed the
    //    handlers already, so it is queued, not fatal.
    let system = actix::System::new();
    let (inv, _) = inventory();
    system.block_on(async move {
        let lifecycle = Lifecycle::builder(inv).logger(logger()).start().unwrap();
        lifecycle.serve("e", "echo", echo());
        // SAFETY: kill(2) with this process's own pid and a valid signal
        // number; it touches no memory.
        let sent = unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
        assert_eq!(sent, 0, "kill(getpid(), SIGTERM)");
    });
    let code = system.run_with_code().unwrap();
    assert_eq!(code, 0, "a signal-initiated clean stop exits 0");

    // 2. Busy: SIGTERM starts draining, SIGINT forces an exit through the
    //    policy (recorded here instead of exiting the test process); the
    //    client then leaves and the stop completes cleanly.
    let system = actix::System::new();
    let (inv, addr) = inventory();
    let forced = Arc::new(Mutex::new(Vec::new()));
    let f = forced.clone();
    system.block_on(async move {
        let lifecycle = Lifecycle::builder(inv)
            .logger(logger())
            .drain_grace(Duration::from_secs(60))
            .on_force_exit(move |code| f.lock().unwrap().push(code))
            .start()
            .unwrap();
        lifecycle.serve("e", "echo", echo());
        let handle = lifecycle.shutdown_handle();
        let conns = lifecycle.connections().clone();
        actix::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let conns = &conns;
            assert!(eventually(Duration::from_secs(20), || async move { conns.live() == 1 }).await);
            kill("TERM");
            tokio::time::timeout(Duration::from_secs(20), handle.draining())
                .await
                .unwrap();
            kill("INT");
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(
                handle.phase(),
                Phase::Draining,
                "the policy decides; here it did not exit"
            );
            drop(client);
        });
    });
    let code = system.run_with_code().unwrap();
    assert_eq!(*forced.lock().unwrap(), vec![128 + libc::SIGINT]);
    assert_eq!(code, 0);
}
