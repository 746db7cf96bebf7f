//! Shutdown end to end against the real binary: SIGTERM stops an idle
//! service with status 0; open sessions get 421 while draining; a silent
//! client is aborted at `Aborting` and leaves the registry; a lame duck
//! fails `/readyz` at once while mail is still accepted.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::{field, number, sample, Client, Gateway, SOON};
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
    // The reader thread may still hold the last lines after the exit.
    assert!(gw.wait_log_end(SOON), "the log did not end");
    assert_eq!(phase_order(&gw), ["draining", "aborting", "stopped"]);
    let stopped = gw.wait_phase("stopped", SOON).unwrap();
    assert_eq!(number(&stopped, "left_open"), Some(0), "{stopped}");
    gw.wait_log(SOON, |l| l.contains(r#""msg":"exiting""#))
        .unwrap_or_else(|| panic!("no \"exiting\":\n{}", gw.log_text()));
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
    // The reader thread may still hold the last lines after the exit.
    assert!(gw.wait_log_end(SOON), "the log did not end");
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

#[test]
fn a_lame_duck_fails_readyz_at_once_but_still_accepts_mail_then_drains() {
    let mut gw = Gateway::start_with_lame_duck("2s", "3s", "1s", "");
    assert_eq!(gw.get("/readyz"), (200, "ready\n".to_owned()));
    gw.signal(Signal::SIGTERM);
    let lame = gw
        .wait_phase("lame_duck", SOON)
        .expect("no lame_duck phase");
    assert_eq!(number(&lame, "lame_duck_ms"), Some(2000), "{lame}");

    // What a load balancer's health check sees, at once.
    assert_eq!(gw.get("/readyz"), (503, "lame_duck\n".to_owned()));
    assert_eq!(gw.get("/healthz").0, 200);
    let metrics = gw.metrics();
    assert_eq!(
        sample(&metrics, "lifecycle_phase", &[("phase", "lame_duck")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "lifecycle_phase", &[("phase", "running")]),
        Some(0.0)
    );

    // A new client is served as before: greeted and its message stored.
    let mut c = Client::connect(gw.smtp);
    c.expect("220 gw.test");
    c.send("EHLO client.example\r\n");
    c.expect("250");
    c.send("MAIL FROM:<a@example.org>\r\n");
    c.expect("250");
    c.send("RCPT TO:<b@example.org>\r\n");
    c.expect("250");
    c.send("DATA\r\n");
    c.expect("354");
    c.send("Subject: lame duck\r\n\r\nstill served\r\n.\r\n");
    c.expect("250");
    assert_eq!(gw.messages().len(), 1, "the message is in the spool");

    // Then the drain as without a lame duck (the session `c` stays open, so
    // it lasts): new connections and new work get 421.
    gw.wait_phase("draining", SOON).expect("no draining phase");
    let mut late = Client::connect(gw.smtp);
    assert_eq!(late.reply(), "421 4.3.2 shutting down\r\n");
    c.send("MAIL FROM:<a@example.org>\r\n");
    assert_eq!(c.reply(), "421 4.3.2 shutting down\r\n");

    let status = gw.wait_exit(SOON).expect("gateway still running");
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", gw.log_text());
    // The reader thread may still hold the last lines after the exit.
    assert!(gw.wait_log_end(SOON), "the log did not end");
    assert_eq!(
        phase_order(&gw),
        ["lame_duck", "draining", "aborting", "stopped"]
    );
}

#[test]
fn a_second_sigterm_in_the_lame_duck_drains_at_once_and_still_exits_0() {
    let mut gw = Gateway::start_with_lame_duck("1h", "3s", "1s", "");
    gw.signal(Signal::SIGTERM);
    gw.wait_phase("lame_duck", SOON)
        .expect("no lame_duck phase");
    gw.signal(Signal::SIGTERM);
    let draining = gw.wait_phase("draining", SOON).expect("no draining phase");
    assert_eq!(
        field(&draining, "trigger").as_deref(),
        Some("SIGTERM"),
        "{draining}"
    );
    let status = gw.wait_exit(SOON).expect("gateway still running");
    assert_eq!(
        status.code(),
        Some(0),
        "not a forced exit: {status:?}\n{}",
        gw.log_text()
    );
}
