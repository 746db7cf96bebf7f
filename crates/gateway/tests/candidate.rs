//! A new child that already serves but has not reported ready yet (an
//! upgrade still starting) when the service stops or the serving child
//! dies: the privileged parent gives it SIGTERM and its drain and abort
//! graces, as any serving child, instead of killing it at once, so a session
//! it accepted from the shared listeners ends with 250 or 421, never a
//! reset. As root (skipped with a printed reason otherwise).

mod common;

use common::upgrading::{replace_with_slow_gateway, Setup};
use common::{field, number, Client, SOON};
use lifecycle_tests::{loud, require_root};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How the service ends while the new child holds the session.
#[derive(Debug, Clone, Copy, PartialEq)]
enum End {
    /// SIGTERM to the parent.
    Stop,
    /// The serving child dies (SIGKILL).
    Crash,
}

#[test]
fn a_stop_during_an_upgrade_lets_the_new_child_finish_its_session() {
    if require_root("the privileged start with upgrades") {
        session_of_the_new_child_survives(End::Stop);
    }
}

#[test]
fn the_serving_child_dying_during_an_upgrade_lets_the_new_child_finish_its_session() {
    if require_root("the privileged start with upgrades") {
        session_of_the_new_child_survives(End::Crash);
    }
}

fn session_of_the_new_child_survives(end: End) {
    let (mut setup, _) = Setup::new();
    // Long enough that the session never meets the abort in this test; the
    // new child stops as soon as its session is over.
    setup.drain_grace = "30s";
    let bin = setup.bin.clone();
    let mut gw = setup.start();
    let first = Pid::from_raw(i32::try_from(gw.service_pid()).unwrap());

    // The binary on disk now: the gateway, slow to report ready (it serves
    // as soon as its listeners accept, as every new child does).
    replace_with_slow_gateway(gw.dir(), &bin, "1h");
    gw.signal(Signal::SIGHUP);
    let accepting = gw
        .wait_log(SOON, |l| {
            l.contains(r#""msg":"ready""#) && l.contains(r#""generation":2"#)
        })
        .unwrap_or_else(|| panic!("generation 2 does not accept:\n{}", gw.log_text()));
    loud(&format!("generation 2 accepts, not ready: {accepting}"));

    // Generation 1 stops taking connections (SIGSTOP): the next one is
    // generation 2's. Mid-DATA when the service ends.
    kill(first, Signal::SIGSTOP).unwrap();
    let mut client = Client::connect(gw.smtp);
    client.expect("220");
    client.send("EHLO held.example\r\n");
    client.expect("250");
    client.send("MAIL FROM:<held@example.org>\r\n");
    client.expect("250");
    client.send("RCPT TO:<sink@example.net>\r\n");
    client.expect("250");
    client.send("DATA\r\n");
    client.expect("354");
    client.send("Subject: held by the new child\r\n\r\nfirst half\r\n");
    match end {
        End::Stop => {
            gw.signal(Signal::SIGTERM);
            gw.wait_log(SOON, |l| {
                l.contains("SIGTERM forwarded to generations [1, 2]")
            })
            .unwrap_or_else(|| panic!("not forwarded:\n{}", gw.log_text()));
            kill(first, Signal::SIGCONT).unwrap();
        }
        End::Crash => kill(first, Signal::SIGKILL).unwrap(),
    }
    // The service is over once generation 1 is gone; before, the parent
    // killed generation 2 right then.
    gw.wait_log(SOON, |l| {
        l.contains(r#""msg":"service exited""#) && l.contains(r#""generation":1"#)
    })
    .unwrap_or_else(|| panic!("generation 1 did not exit:\n{}", gw.log_text()));
    client.send("second half\r\n.\r\n");
    let reply = client.reply();
    loud(&format!("{end:?}: the end of DATA got {reply:?}"));
    assert!(
        reply.starts_with("250") || reply.starts_with("421"),
        "{end:?}: the session of the new child was cut off ({reply:?}):\n{}",
        gw.log_text()
    );
    if reply.starts_with("250") {
        client.send("QUIT\r\n");
        let bye = client.reply();
        assert!(bye.starts_with("221") || bye.starts_with("421"), "{bye:?}");
        let stored = gw
            .messages()
            .iter()
            .filter(|p| {
                let body = std::fs::read_to_string(p).unwrap();
                body.contains("first half") && body.contains("second half")
            })
            .count();
        assert_eq!(stored, 1, "the acknowledged message is stored once");
    }

    let status = gw.wait_exit(SOON).expect("the parent still runs");
    let expected = match end {
        End::Stop => 0,
        End::Crash => 137,
    };
    assert_eq!(status.code(), Some(expected), "{}", gw.log_text());
    let exited = gw
        .wait_log(SOON, |l| {
            l.contains(r#""msg":"stopped new generation exited""#)
        })
        .unwrap_or_else(|| panic!("no exit of generation 2:\n{}", gw.log_text()));
    assert_eq!(number(&exited, "generation"), Some(2), "{exited}");
    assert_eq!(number(&exited, "status"), Some(0), "{exited}");
    let failed = gw
        .wait_log(SOON, |l| l.contains(r#""msg":"upgrade failed""#))
        .unwrap_or_else(|| panic!("no failed upgrade:\n{}", gw.log_text()));
    assert_eq!(
        field(&failed, "reason").as_deref(),
        Some("the service is stopping"),
        "{failed}"
    );
}
