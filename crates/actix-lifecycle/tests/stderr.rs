//! With no logger injected, a failure still reaches standard error: a
//! listener that cannot start, and the forced exit of a second signal
//! (written before the process exits). Each case runs in a child process
//! (this test binary, re-run with one test selected).

use std::process::Command;
use std::time::Duration;

use actix_lifecycle::{BeginShutdown, Lifecycle, SignalReceived};
use lifecycle_handoff::{Inventory, ListenerSpec, PassedListener};

const CHILD: &str = "ACTIX_LIFECYCLE_STDERR_CHILD";

/// Runs the test `name` of this binary in a child with `CHILD` set.
fn run_child(name: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap()
}

fn inventory() -> (Inventory, std::net::SocketAddr) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let inventory = Inventory {
        listeners: vec![PassedListener {
            spec: ListenerSpec::tcp("a", addr),
            fd: l.into(),
        }],
        files: vec![],
    };
    (inventory, addr)
}

fn echo() -> actix_lifecycle::ConnHandler {
    actix_lifecycle::ConnHandler::new(|mut conn| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
    })
}

#[test]
fn a_listener_that_cannot_start_is_reported_on_stderr_without_a_logger() {
    if std::env::var_os(CHILD).is_some() {
        actix::System::new().block_on(async {
            let (inventory, _) = inventory();
            let lifecycle = Lifecycle::builder(inventory)
                .handle_signals(false)
                .stop_system(false)
                .start()
                .unwrap();
            lifecycle.serve("a", "echo", echo());
            lifecycle.serve("missing", "echo", echo());
            assert!(lifecycle.ready().await.is_err());
        });
        return;
    }
    let out = run_child("a_listener_that_cannot_start_is_reported_on_stderr_without_a_logger");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("actix-lifecycle: ERROR: ")
            && stderr.contains("no listener named \"missing\""),
        "{stderr}"
    );
}

#[test]
fn a_forced_exit_says_why_on_stderr_before_exiting() {
    if std::env::var_os(CHILD).is_some() {
        actix::System::new().block_on(async {
            let (inventory, addr) = inventory();
            let lifecycle = Lifecycle::builder(inventory)
                .handle_signals(false)
                .drain_grace(Duration::from_secs(600))
                .start()
                .unwrap();
            lifecycle.serve("a", "echo", echo());
            lifecycle.ready().await.unwrap();
            // An open connection keeps the shutdown draining.
            let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let connections = lifecycle.connections().clone();
            while connections.live() == 0 {
                tokio::task::yield_now().await;
            }
            lifecycle.coordinator().do_send(BeginShutdown);
            lifecycle.shutdown_handle().draining().await;
            let signal = SignalReceived {
                signal: libc::SIGTERM,
            };
            lifecycle.coordinator().send(signal).await.unwrap();
            unreachable!("the second signal exits the process");
        });
        return;
    }
    let out = run_child("a_forced_exit_says_why_on_stderr_before_exiting");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    assert!(
        stderr.contains("second signal during shutdown: exiting now with status 143"),
        "{stderr}"
    );
}
