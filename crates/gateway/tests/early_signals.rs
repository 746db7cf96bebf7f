//! SIGHUP and SIGUSR2 that reach a gateway process before its handlers
//! exist — while it starts, right up to and after its ready report — wait
//! until the handlers are installed and are handled then, instead of
//! terminating the process (their default action): a freshly started
//! gateway hands over, a successor started by a hand-over survives and hands
//! over in turn, a child of the privileged parent logs that the parent
//! upgrades. Each signal is sent as soon as the test sees the process's
//! first log line. As root, to start the gateway as user nobody (skipped
//! with a printed reason otherwise).

mod common;

use common::upgrading::{as_nobody, count, gone, Reaper, Setup, NOBODY};
use common::{number, Client, Gateway, SOON};
use lifecycle_tests::{loud, require_root};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The pid of the first process whose `starting` line matches `which`,
/// waiting for it.
fn started(gw: &Gateway, which: impl Fn(&str) -> bool) -> i32 {
    let line = gw
        .wait_log(SOON, |l| l.contains(r#""msg":"starting""#) && which(l))
        .unwrap_or_else(|| panic!("no start line:\n{}", gw.log_text()));
    i32::try_from(number(&line, "pid").unwrap()).unwrap()
}

fn send(pid: i32, signal: Signal) {
    kill(Pid::from_raw(pid), signal).unwrap();
}

/// The log line with message `msg` and every one of `fields`, waiting
/// for it; panics with the log when the process died instead.
fn expect_line(gw: &Gateway, msg: &str, fields: &[&str]) -> String {
    let needle = format!(r#""msg":"{msg}""#);
    gw.wait_log(SOON, |l| {
        l.contains(&needle) && fields.iter().all(|f| l.contains(f))
    })
    .unwrap_or_else(|| panic!("no {msg:?} with {fields:?}:\n{}", gw.log_text()))
}

fn deliver(gw: &Gateway, token: &str) {
    let mut c = Client::connect(gw.smtp);
    c.expect("220");
    c.send("EHLO early.example\r\n");
    c.expect("250");
    c.send("MAIL FROM:<early@example.org>\r\nRCPT TO:<sink@example.net>\r\nDATA\r\n");
    c.expect("250");
    c.expect("250");
    c.expect("354");
    c.send(&format!("Subject: early\r\n\r\n{token}\r\n.\r\nQUIT\r\n"));
    c.expect("250");
    c.expect("221");
}

#[test]
fn a_sighup_while_a_gateway_or_its_successor_starts_is_handled_not_fatal() {
    if !require_root("starting the gateway as user nobody") {
        return;
    }
    let (setup, _) = Setup::new();
    for path in [&setup.cert, &setup.key] {
        nix::unistd::chown(path, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    }
    // No privileged parent: the serving process upgrades itself on SIGHUP.
    let mut gw = setup.spawn("", |cmd| {
        as_nobody(cmd);
    });
    let mut reaper = Reaper(Vec::new());
    let first = started(&gw, |_| true);
    assert_eq!(first, i32::try_from(gw.pid()).unwrap());
    send(first, Signal::SIGHUP);

    // It was not killed: it becomes ready, then handles the SIGHUP as an
    // upgrade request and starts a successor.
    expect_line(&gw, "ready", &[]);
    gw.learn_addresses();
    expect_line(
        &gw,
        "upgrade started",
        &[r#""from":1"#, r#""signal":"SIGHUP""#],
    );
    // The successor gets a SIGHUP of its own as soon as it starts: it
    // survives, becomes ready, and hands over in turn.
    let second = started(&gw, |l| number(l, "pid") != Some(i64::from(first)));
    reaper.0.push(second);
    send(second, Signal::SIGHUP);
    let child = format!(r#""child":{second}"#);
    expect_line(&gw, "upgrade succeeded", &[r#""from":1"#, &child]);
    let third = expect_line(&gw, "upgrade succeeded", &[r#""from":2"#, r#""to":3"#]);
    let third = i32::try_from(number(&third, "child").unwrap()).unwrap();
    reaper.0.push(third);
    loud(&format!(
        "SIGHUP at the first log line of pids {first} and {second}: handed over {first} -> {second} -> {third}"
    ));

    deliver(&gw, "after-two-early-signals");
    let status = gw.wait_exit(SOON).expect("generation 1 still running");
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
    send(third, Signal::SIGTERM);
    let deadline = std::time::Instant::now() + SOON;
    while !(gone(second) && gone(third)) {
        assert!(
            std::time::Instant::now() < deadline,
            "generations 2 and 3 still run"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Every generation exited: the log ends once the reader thread read
    // their last lines.
    assert!(gw.wait_log_end(SOON), "the log did not end");
    assert_eq!(
        count(&gw, "draining for an upgrade"),
        2,
        "{}",
        gw.log_text()
    );
    assert_eq!(gw.messages().len(), 1);
}

#[test]
fn an_upgrade_signal_to_a_starting_child_of_the_privileged_parent_is_logged_not_fatal() {
    if !require_root("the privileged start") {
        return;
    }
    let (setup, _) = Setup::new();
    let mut gw = setup.spawn(r#"user = "nobody""#, |_| {});
    let child = started(&gw, |l| !l.contains(r#""mode":"privileged""#));
    send(child, Signal::SIGHUP);
    send(child, Signal::SIGUSR2);

    // Not killed: the parent sees it ready, and it says whom to signal.
    expect_line(&gw, "service ready", &[]);
    gw.learn_addresses();
    for signal in ["SIGHUP", "SIGUSR2"] {
        expect_line(
            &gw,
            "upgrade signal ignored: the privileged parent upgrades the service (signal the parent)",
            &[&format!(r#""signal":"{signal}""#)],
        );
    }
    deliver(&gw, "after-early-signals-to-the-child");

    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(SOON).expect("still running");
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
}
