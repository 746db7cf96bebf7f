//! Accept errors never spin a core: with the process out of descriptors
//! (EMFILE) and no reserve descriptor to answer with (the listener started
//! when none was left), the listener backs off and recovers when
//! descriptors free up. (With its reserve it answers clients busy instead:
//! `accept_reserve.rs`.)
//!
//! The limit is lowered on this very process with prlimit(1) (util-linux),
//! so this file holds a single test.

mod common;

use std::process::Command;
use std::time::Duration;

use actix_lifecycle::{GetListenerInfo, Lifecycle};
use common::{echo, eventually, logger, roundtrip};
use lifecycle_handoff::{Inventory, ListenerSpec, PassedListener};

/// The highest open descriptor number.
fn max_fd() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .max()
        .unwrap()
}

fn set_soft_nofile(soft: &str) {
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={soft}:"))
        .status()
        .unwrap();
    assert!(status.success(), "prlimit failed");
}

fn soft_nofile() -> String {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().to_owned()
}

#[actix::test]
async fn emfile_backs_off_instead_of_spinning_and_recovers() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("SKIP: prlimit not installed");
        return;
    }
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = tcp.local_addr().unwrap();
    let lifecycle = Lifecycle::builder(Inventory {
        listeners: vec![PassedListener {
            spec: ListenerSpec::tcp("t", addr),
            fd: tcp.into(),
        }],
        files: vec![],
    })
    .logger(logger())
    .handle_signals(false)
    .stop_system(false)
    .start()
    .unwrap();
    // The client's socket exists before the descriptors run out.
    let client = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();

    // No descriptor number above the current ones, every hole below
    // filled: not one left, so the listener gets no reserve.
    let saved = soft_nofile();
    set_soft_nofile(&(max_fd() + 1).to_string());
    let mut fillers = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => fillers.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                break;
            }
        }
    }
    let listener = lifecycle.serve("t", "echo", echo());
    let l = listener.clone();
    assert!(
        eventually(Duration::from_secs(20), || {
            let l = l.clone();
            async move { l.send(GetListenerInfo).await.unwrap().accepting }
        })
        .await
    );
    client.connect(&addr.into()).unwrap();
    client.set_nonblocking(true).unwrap();
    let blocked = tokio::net::TcpStream::from_std(client.into()).unwrap();
    // The server cannot accept it now: EMFILE, again and again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let info = listener.send(GetListenerInfo).await.unwrap();
    set_soft_nofile(&saved);
    drop(fillers);

    assert!(
        info.accept_errors >= 1,
        "the accept failed with EMFILE: {info:?}"
    );
    assert!(
        info.accept_errors < 50,
        "a backing-off listener retries a handful of times in 600 ms, a spinning one \
         thousands: {} errors",
        info.accept_errors
    );
    assert!(info.accepting, "the listener keeps going");

    // Descriptors are back: the waiting connection is accepted and served.
    let mut blocked = blocked;
    assert_eq!(roundtrip(&mut blocked, b"served").await, b"served");
    let l = listener.clone();
    assert!(
        eventually(Duration::from_secs(20), || {
            let l = l.clone();
            async move { l.send(GetListenerInfo).await.unwrap().accepted == 1 }
        })
        .await
    );
}
