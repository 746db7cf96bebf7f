//! Shutdown end to end against the real binary: SIGTERM stops an idle
//! service with status 0; open sessions get 421 while draining; a silent
//! client is aborted at `Aborting` and leaves the registry.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::{number, sample, Client, Gateway, SOON};
use nix::sys::signal::Signal;

fn phase_order(gw: &Gateway) -> Vec<String> {
    gw.logs()
        .iter()
        .filter(|l| l.contains(r#""msg":"phase""#))
        .filter_map(|l| common::field(l, "phase"))
        .collect()
}

#[test]
fn sigterm_stops_an_idle_service_with_status_0() {
    let mut gw = Gateway::start("3s", "1s");
    assert_eq!(gw.get("/readyz"), (200, "ready\n".to_owned()));
    gw.signal(Signal::SIGTERM);
    // Nothing is open: the drain grace is not waited for. The bound only
    // catches a hang.
    let status = gw
        .wait_exit(SOON)
        .expect("gateway still running after SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", gw.log_text());
    assert_eq!(phase_order(&gw), ["draining", "aborting", "stopped"]);
    let stopped = gw.wait_phase("stopped", SOON).unwrap();
    assert_eq!(number(&stopped, "left_open"), Some(0), "{stopped}");
    assert!(gw.log_text().contains(r#""msg":"exiting""#));
}

#[test]
fn sigterm_mid_session_gives_421_and_exits_0_within_the_graces() {
    let (drain, abort) = (Duration::from_secs(3), Duration::from_secs(1));
    let mut gw = Gateway::start("3s", "1s");
    let mut open = Client::connect(gw.smtp);
    open.expect("220");
    open.send("EHLO client.example\r\n");
    open.expect("250-gw.test");

    gw.signal(Signal::SIGTERM);
    let draining = gw.wait_phase("draining", SOON).expect("no draining phase");
    assert_eq!(number(&draining, "live"), Some(1), "{draining}");

    // Readiness drops while draining; health stays.
    assert_eq!(gw.get("/readyz"), (503, "draining\n".to_owned()));
    assert_eq!(gw.get("/healthz").0, 200);

    // A new connection while draining: 421 and closed.
    let mut late = Client::connect(gw.smtp);
    assert_eq!(late.reply(), "421 4.3.2 shutting down\r\n");
    assert_eq!(late.line(), "");

    // The open session: 421 at its next command, then closed.
    open.send("MAIL FROM:<a@example.org>\r\n");
    assert_eq!(open.reply(), "421 4.3.2 shutting down\r\n");
    assert_eq!(open.line(), "");

    let status = gw
        .wait_exit(drain + abort + Duration::from_secs(10))
        .expect("gateway still running after drain + abort grace");
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", gw.log_text());
    assert_eq!(phase_order(&gw), ["draining", "aborting", "stopped"]);
    let stopped = gw.wait_phase("stopped", SOON).unwrap();
    assert_eq!(number(&stopped, "left_open"), Some(0), "{stopped}");
}

#[test]
fn a_message_in_transfer_completes_while_draining() {
    let mut gw = Gateway::start("5s", "1s");
    let mut c = Client::connect(gw.smtp);
    c.expect("220");
    c.send("EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n");
    c.expect("250-");
    c.expect("250");
    c.expect("250");
    c.expect("354");
    c.send("Subject: in flight\r\n\r\nfirst half\r\n");
    gw.signal(Signal::SIGTERM);
    gw.wait_phase("draining", SOON).expect("no draining phase");
    c.send("second half\r\n.\r\n");
    c.expect("250 2.0.0 ok: queued as");
    assert_eq!(gw.messages().len(), 1, "acknowledged, so in the spool");
    c.send("QUIT\r\n");
    c.expect("221");
    let status = gw.wait_exit(SOON).expect("still running");
    assert_eq!(status.code(), Some(0));
    let stored = std::fs::read(&gw.messages()[0]).unwrap();
    assert!(stored.ends_with(b"first half\r\nsecond half\r\n"));
}

#[test]
fn a_silent_client_is_aborted_and_leaves_the_registry() {
    // A long abort grace: if the aborted connection stayed registered, the
    // stop would wait all of it and report the connection as left open.
    let mut gw = Gateway::start("1s", "30s");
    let mut silent = Client::connect(gw.smtp);
    silent.expect("220");
    let before = gw.metrics();
    assert_eq!(
        sample(
            &before,
            "lifecycle_connections",
            &[("protocol", "smtp"), ("listener", "smtp")]
        ),
        Some(1.0),
        "{before}"
    );

    gw.signal(Signal::SIGTERM);
    // The client says nothing; at Aborting its connection ends without a reply.
    assert_eq!(silent.line(), "", "the aborted client reads end of input");
    let aborting = gw.wait_phase("aborting", SOON).expect("no aborting phase");
    assert_eq!(number(&aborting, "aborted"), Some(1), "{aborting}");
    let stopped = gw.wait_phase("stopped", SOON).expect("no stopped phase");
    assert_eq!(number(&stopped, "left_open"), Some(0), "{stopped}");
    assert_eq!(
        common::field(&stopped, "reason").as_deref(),
        Some("nothing open"),
        "{stopped}"
    );
    let status = gw.wait_exit(SOON).expect("still running");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(status.signal(), None);
    let closed = gw
        .logs()
        .into_iter()
        .find(|l| l.contains(r#""msg":"connection closed""#) && l.contains(r#""protocol":"smtp""#))
        .expect("no close line for the silent client");
    assert_eq!(
        common::field(&closed, "reason").as_deref(),
        Some("aborted"),
        "{closed}"
    );
}
