//! The synchronous `sd_notify` sender against real Unix datagram sockets
//! (a file in a temporary directory, or an abstract name) standing in for
//! systemd's `NOTIFY_SOCKET`, and the parsing of the service manager's
//! variables. The process environment is never touched: every variable is
//! injected through `NotifyEnv`. (The actor that drives this sender is
//! tested in actix-lifecycle's `tests/notify.rs`.)

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::time::{Duration, Instant};

use lifecycle_handoff::{Notifier, NotifyEnv, NotifyError, NotifyState};
use lifecycle_tests::NotifySocket;

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn each_call_sends_one_datagram_of_lines() {
    let systemd = NotifySocket::bind().unwrap();
    let path = systemd.path().to_owned();
    let sender = Notifier::new(&path).unwrap();
    assert_eq!(sender.socket(), path.to_str().unwrap());
    sender.ready().unwrap();
    sender.main_pid(42).unwrap();
    sender.stopping().unwrap();
    sender.watchdog().unwrap();
    sender
        .notify(&[
            NotifyState::Reloading,
            NotifyState::MonotonicUsec(7),
            NotifyState::Status("upgrading"),
        ])
        .unwrap();
    let got: Vec<String> = std::iter::from_fn(|| systemd.recv(Duration::from_millis(200)).unwrap())
        .take(6)
        .collect();
    assert_eq!(
        got,
        [
            "READY=1\n",
            "MAINPID=42\n",
            "STOPPING=1\n",
            "WATCHDOG=1\n",
            "RELOADING=1\nMONOTONIC_USEC=7\nSTATUS=upgrading\n"
        ]
    );
}

#[cfg(target_os = "linux")]
#[test]
fn the_sender_reaches_abstract_sockets() {
    let name = format!(
        "lifecycle-handoff-notify-test-{}-{:?}",
        std::process::id(),
        Instant::now()
    );
    let systemd = NotifySocket::bind_abstract(&name).unwrap();
    let sender = Notifier::new(format!("@{name}")).unwrap();
    assert_eq!(sender.socket(), format!("@{name}"));
    sender.ready_as_main(4242).unwrap();
    assert_eq!(
        systemd.recv(LIMIT).unwrap().as_deref(),
        Some("READY=1\nMAINPID=4242\n")
    );
    sender.status("two\nlines").unwrap();
    assert_eq!(
        systemd.recv(LIMIT).unwrap().as_deref(),
        Some("STATUS=two lines\n")
    );
    let err = sender
        .notify(&[NotifyState::Status("x\nREADY=1")])
        .unwrap_err();
    assert!(matches!(err, NotifyError::Newline { .. }), "{err:?}");
    sender
        .notify(&[NotifyState::Stopping, NotifyState::Status("bye")])
        .unwrap();
    assert_eq!(
        systemd.recv(LIMIT).unwrap().as_deref(),
        Some("STOPPING=1\nSTATUS=bye\n")
    );
}

#[test]
fn unusable_socket_values_name_notify_socket() {
    // A relative path and a NUL byte are in the crate's bad-input table.
    let long = format!("/{}", "x".repeat(200));
    for bad in ["vsock:2:1234", "@", long.as_str()] {
        let err = Notifier::new(bad).unwrap_err();
        assert!(matches!(err, NotifyError::SocketValue { .. }), "{err:?}");
        assert!(err.to_string().contains("NOTIFY_SOCKET="), "{err}");
    }
    // Empty means "off", as if unset.
    assert!(!NotifyEnv::new().notify_socket("").has_notify_socket());
    assert!(NotifyEnv::new()
        .notify_socket("")
        .sender()
        .unwrap()
        .is_none());
    let err = NotifyEnv::new()
        .notify_socket("notify")
        .sender()
        .unwrap_err();
    assert!(err.to_string().contains("\"notify\""), "{err}");
}

#[test]
fn a_send_to_a_socket_nobody_binds_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody-listens");
    let sender = Notifier::new(&path).unwrap();
    let err = sender.ready().unwrap_err();
    assert!(matches!(err, NotifyError::Send { .. }), "{err:?}");
    assert!(!err.is_queue_full());
    let text = err.to_string();
    assert!(
        text.contains("nobody-listens") && text.contains("READY=1"),
        "{text}"
    );
}

#[test]
fn a_full_queue_fails_the_send_instead_of_blocking() {
    // Nobody reads: the receiver's queue fills (net.unix.max_dgram_qlen).
    let systemd = NotifySocket::bind().unwrap();
    let path = systemd.path().to_owned();
    // The default (250 ms) bounds the wait too; 50 ms keeps the test short.
    let sender = Notifier::new(&path)
        .unwrap()
        .send_timeout(Duration::from_millis(50))
        .unwrap();
    let mut sent = 0;
    let err = loop {
        match sender.watchdog() {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100_000, "the queue never filled");
    };
    match &err {
        NotifyError::Send { source, what, .. } => {
            assert!(
                matches!(
                    source.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "{source:?}"
            );
            assert_eq!(what, "WATCHDOG=1");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    // Zero never waits: a full queue is WouldBlock at once.
    let sender = sender.send_timeout(Duration::ZERO).unwrap();
    let err = sender.ready().unwrap_err();
    assert!(err.is_queue_full(), "{err:?}");
}

#[test]
fn the_default_send_timeout_is_bounded() {
    let systemd = NotifySocket::bind().unwrap();
    let path = systemd.path().to_owned();
    let sender = Notifier::new(&path).unwrap();
    let mut sent = 0;
    let (err, waited) = loop {
        let began = Instant::now();
        match sender.watchdog() {
            Ok(()) => sent += 1,
            Err(e) => break (e, began.elapsed()),
        }
        assert!(sent < 100_000, "the queue never filled");
    };
    // It gave up instead of hanging, after waiting for room (250 ms; the
    // kernel may round the timeout, hence 200 ms) rather than at once.
    assert!(err.is_queue_full(), "{err:?}");
    assert!(
        waited >= Duration::from_millis(200) && waited < LIMIT,
        "the failing send returned after {waited:?}"
    );
}

#[test]
fn the_variables_are_read_from_an_injected_environment() {
    let systemd = NotifySocket::bind().unwrap();
    let path = systemd.path().to_owned();
    let env: BTreeMap<OsString, OsString> = BTreeMap::from([
        ("NOTIFY_SOCKET".into(), path.clone().into()),
        ("WATCHDOG_USEC".into(), "30000000".into()),
        ("WATCHDOG_PID".into(), std::process::id().to_string().into()),
    ]);
    let vars = NotifyEnv::from_environment(&env);
    assert_eq!(env.len(), 3, "reading leaves the variables in place");
    assert_eq!(vars.watchdog().unwrap(), Some(Duration::from_secs(30)));
    vars.sender().unwrap().unwrap().ready().unwrap();
    assert_eq!(systemd.recv(LIMIT).unwrap().as_deref(), Some("READY=1\n"));

    let other = (std::process::id() + 1).to_string();
    let vars = NotifyEnv::new().watchdog_usec("100000").watchdog_pid(other);
    assert_eq!(vars.watchdog().unwrap(), None, "another process's watchdog");
    assert!(NotifyEnv::from_environment(&BTreeMap::new())
        .sender()
        .unwrap()
        .is_none());
}

#[test]
fn bad_watchdog_values_are_errors_naming_the_variable() {
    for bad in [
        "abc",
        "0",
        "",
        "-5",
        "+5",
        " 5",
        "30s",
        "18446744073709551615",
    ] {
        let err = NotifyEnv::new().watchdog_usec(bad).watchdog().unwrap_err();
        assert!(matches!(err, NotifyError::WatchdogUsec { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("WATCHDOG_USEC") && text.contains(&format!("{bad:?}")),
            "{text}"
        );
    }
    for bad in ["me", "0", "+1", "4294967296"] {
        let err = NotifyEnv::new()
            .watchdog_usec("1000000")
            .watchdog_pid(bad)
            .watchdog()
            .unwrap_err();
        assert!(matches!(err, NotifyError::WatchdogPid { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&format!("WATCHDOG_PID={bad:?}")),
            "{err}"
        );
    }
}
