//! The processes around an upgrade: the parent's notifications to
//! systemd, the first child's exit status, a killed parent, a successor
//! that takes over the listener.

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::harness::{ask, field, install_copy, load, read_lines, Parent};
use crate::{CHILD_EXIT, CHILD_HANG, FILE, READY_TIMEOUT_MS, ROLE, TIMEOUT};

use lifecycle_tests::NotifySocket;

/// Receives one datagram (a notification), or panics after the timeout.
fn receive(socket: &NotifySocket) -> String {
    socket
        .recv(TIMEOUT)
        .unwrap()
        .expect("a notification from the parent")
}

pub(crate) fn parent_notifies_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let socket = NotifySocket::bind_at(&dir.path().join("notify.sock")).unwrap();
    let path = socket.path();
    let mut parent = Parent::start(
        dir.path(),
        &[
            ("NOTIFY_SOCKET", path.display().to_string()),
            ("WATCHDOG_USEC", "10000000".into()),
            ("WATCHDOG_PID", "1".into()),
        ],
    );
    let ready = receive(&socket);
    let lines: Vec<&str> = ready.lines().collect();
    assert!(lines.contains(&"READY=1"), "{ready:?}");
    assert!(
        lines.contains(&format!("MAINPID={}", parent.child.id()).as_str()),
        "{ready:?}"
    );
    let answer = parent.ask();
    assert_eq!(field(&answer, "notify"), "unset", "{answer}");
    assert_eq!(field(&answer, "watchdog"), "unset", "{answer}");

    parent.signal(Signal::SIGHUP);
    let reloading = receive(&socket);
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    let reloaded = receive(&socket);
    assert!(reloaded.lines().any(|l| l == "READY=1"), "{reloaded:?}");
    assert!(
        reloaded.contains("STATUS=serving generation 2"),
        "{reloaded:?}"
    );
    parent.expect("upgrade from generation 1 to 2 succeeded");

    parent.signal(Signal::SIGTERM);
    let stopping = receive(&socket);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let (code, seen) = parent.finish();
    assert_eq!(code, 0, "{seen:#?}");
}

pub(crate) fn first_child_exit_is_passed_through() {
    let dir = tempfile::tempdir().unwrap();
    // The parent cannot open a privileged file: a clear error, exit 70,
    // nothing started.
    let missing = dir.path().join("does-not-exist");
    let binary = install_copy(dir.path());
    let output = Command::new(&binary)
        .env(ROLE, "parent")
        .env(FILE, &missing)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(70));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does-not-exist"), "{stderr}");

    // A first child that exits at start-up: its code is the parent's.
    let parent = Parent::start(dir.path(), &[(CHILD_EXIT, "4".into())]);
    let (code, seen) = parent.finish();
    assert_eq!(code, 4, "{seen:#?}");
    assert!(
        seen.iter()
            .any(|l| l.contains("serving generation 1") && l.ends_with("exited with code 4")),
        "{seen:#?}"
    );

    // A first child that never reports ready: killed after the timeout, and
    // the parent fails with a message that says so.
    let output = Command::new(&binary)
        .env(ROLE, "parent")
        .env(CHILD_HANG, "1")
        .env(READY_TIMEOUT_MS, "1000")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(70));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("generation 1") && stderr.contains("did not become ready"),
        "{stderr}"
    );
}

/// True once `pid` is gone or a zombie waiting for a reaper.
pub(crate) fn is_gone(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty()
        || stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'))
}

pub(crate) fn killed_parent_takes_the_upgraded_child_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut parent = Parent::start(dir.path(), &[]);
    parent.expect("generation 1 (pid");
    parent.signal(Signal::SIGHUP);
    parent.expect("upgrade from generation 1 to 2 succeeded");
    parent.expect("old generation 1 (");
    let answer = parent.ask();
    assert_eq!(field(&answer, "gen"), "2", "{answer}");
    let child: i32 = field(&answer, "pid").parse().unwrap();
    // The upgraded child was spawned from the main thread too, so its
    // parent-death signal fires when the parent dies.
    parent.signal(Signal::SIGKILL);
    let deadline = Instant::now() + TIMEOUT;
    while !is_gone(child) {
        assert!(
            Instant::now() < deadline,
            "child {child} outlived its parent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = TcpStream::connect_timeout(&parent.address(), TIMEOUT);
    assert!(refused.is_err(), "the listener died with both processes");
}

pub(crate) fn successor_takes_over_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let socket = NotifySocket::bind_at(&dir.path().join("notify.sock")).unwrap();
    let path = socket.path();
    let binary = install_copy(dir.path());
    let mut old = Command::new(&binary)
        .env(ROLE, "old")
        .env("NOTIFY_SOCKET", path)
        .env("WATCHDOG_PID", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = read_lines(old.stdout.take().unwrap());
    let port: u16 = lines.recv_timeout(TIMEOUT).unwrap()["port ".len()..]
        .parse()
        .unwrap();
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let before = ask(address).unwrap();
    assert_eq!(field(&before, "gen"), "1");
    assert_eq!(field(&before, "pid"), old.id().to_string());

    let stop = Arc::new(AtomicBool::new(false));
    let tally = load(address, 2, Arc::clone(&stop));
    kill(Pid::from_raw(old.id() as i32), Signal::SIGHUP).unwrap();
    let reloading = receive(&socket);
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    let line = lines.recv_timeout(TIMEOUT).unwrap();
    assert!(line.starts_with("successor "), "{line}");
    let successor: i32 = line.split(' ').nth(1).unwrap().parse().unwrap();
    let ready = receive(&socket);
    // No MAINPID= from the old process: systemd would supervise the
    // successor as "not our child" and SIGKILL it on stop (issue 17); the
    // successor names itself once the old process exited.
    assert!(
        !ready.lines().any(|l| l.starts_with("MAINPID=")),
        "{ready:?} (successor {successor})"
    );
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");

    // The old process drains and exits 0; the successor (no death signal)
    // keeps serving.
    let status = old.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(200));
    let after = ask(address).unwrap();
    assert_eq!(field(&after, "gen"), "2", "{after}");
    assert_eq!(field(&after, "ok"), "0", "{after}");
    assert_eq!(field(&after, "pid"), successor.to_string());
    assert_eq!(
        field(&after, "notify"),
        "set",
        "the successor becomes the main process"
    );
    assert_eq!(
        field(&after, "watchdog"),
        "unset",
        "WATCHDOG_PID named the old process"
    );
    let tally = tally.lock().unwrap();
    println!(
        "  hand-off under load: answers {:?}, errors {:?}",
        tally.answers, tally.errors
    );
    assert!(tally.errors.is_empty(), "{:?}", tally.errors);

    // Stop the successor (not our child: it was re-parented).
    kill(Pid::from_raw(successor), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !is_gone(successor) {
        assert!(
            Instant::now() < deadline,
            "successor {successor} did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
