//! Idle hordes: 5,000 connections that never speak, then SIGTERM: the IMAP
//! ones are told goodbye during the drain (paced, see `paced.rs`), every
//! SMTP one is aborted, and the process exits 0 within drain + abort
//! grace + 1 s.

use std::time::{Duration, Instant};

use lifecycle_tests::json_number;

use super::{
    assert_no_panic, closed_for, figure, graced_gateway, kv, live_now, scaled, terminate, turn,
    LoadClient, ABORT, DRAIN,
};

const HORDE: usize = 5_000;

#[test]
fn an_idle_horde_is_aborted_and_the_process_exits_in_time() {
    let _turn = turn();
    let per_protocol = scaled(HORDE) / 2;
    let horde = per_protocol * 2;
    let mut gw = graced_gateway();
    let mut client = LoadClient::spawn(&[
        "hold".into(),
        format!("{}={per_protocol}", gw.smtp),
        format!("{}={per_protocol}", gw.imap),
    ]);
    let held = client.expect("held", Duration::from_secs(120));
    assert_eq!(kv(&held, "connected"), horde as u64, "{held}");

    // Every connection is registered before the signal.
    let deadline = Instant::now() + Duration::from_secs(60);
    let live = loop {
        let live = live_now(&gw);
        if live == horde || Instant::now() > deadline {
            break live;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(live, horde, "connections registered");

    let (status, exit_after) = terminate(&mut gw, DRAIN + ABORT + Duration::from_secs(30));
    let closed_by_server = client.ask("peer-closed 10000", "peer-closed", Duration::from_secs(30));
    client.finish();
    assert!(
        gw.wait_log_end(Duration::from_secs(60)),
        "the log did not end"
    );
    let aborting = gw
        .wait_phase("aborting", Duration::from_secs(5))
        .expect("an aborting phase line");
    let stopped = gw
        .wait_phase("stopped", Duration::from_secs(5))
        .expect("a stopped phase line");
    let aborted_sessions = closed_for(&gw, "aborted");
    let said_bye = closed_for(&gw, "draining");
    let opened = gw.count_logs(|l| l.contains(r#""msg":"connection open""#));
    figure(
        "idle_hordes",
        &format!(
            "{held}; live before SIGTERM={live}; exit={status} after {exit_after:?}; \
             sessions opened={opened} closed as aborted={aborted_sessions} draining={said_bye}; client {closed_by_server}; \
             {aborting}; {stopped}"
        ),
    );
    assert_eq!(status.code(), Some(0), "exit status");
    assert!(
        exit_after <= DRAIN + ABORT + Duration::from_secs(1),
        "exit {exit_after:?} after SIGTERM; bound {:?} + 1 s",
        DRAIN + ABORT
    );
    // Every SMTP session waits for a command and is aborted; the IMAP ones
    // were told goodbye during the drain, the last ones maybe just as the
    // abort came.
    let aborted_live = json_number(&aborting, "aborted").unwrap_or(0);
    assert!(
        (per_protocol as i64..=horde as i64).contains(&aborted_live),
        "{aborting}"
    );
    assert_eq!(json_number(&stopped, "left_open"), Some(0), "{stopped}");
    assert_eq!(opened, horde, "sessions opened");
    assert!(
        aborted_sessions >= per_protocol,
        "every SMTP session ended by the abort"
    );
    assert_eq!(
        aborted_sessions + said_bye,
        horde,
        "sessions ended by the abort or a goodbye"
    );
    assert_eq!(kv(&closed_by_server, "open"), 0, "{closed_by_server}");
    assert_no_panic(&gw);
}
