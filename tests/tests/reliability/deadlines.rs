//! Deadlines (issue 14) against the real binary, with small configured
//! values: a client dripping one byte a second into DATA is cut by the
//! minimum data rate, and one that sent part of a message and then drips
//! is cut at the DATA deadline. Each gets `421 4.4.2` naming the reason,
//! nothing is stored, the temporary file is gone, and the cut is logged
//! and counted.

use std::io::{ErrorKind, Write};
use std::time::{Duration, Instant};

use lifecycle_tests::{metric_value, GatewayProcess};

use super::smtp::{spool_files, tmp_files, Smtp};
use super::{assert_no_panic, figure, gateway, turn};

/// Drips one byte a second on a clone of the connection until it fails;
/// returns the first reply line the server sends.
fn drip_until_cut(c: &mut Smtp, writer: std::net::TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let dripper = std::thread::spawn(move || {
        let mut w = writer;
        for _ in 0..120 {
            if w.write_all(b"d").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let reply = c.line().unwrap_or_else(|e| format!("no reply: {e}"));
    let took = started.elapsed();
    // The server closes after the reply.
    match c.line() {
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ) => {}
        other => panic!("the connection stays open after the cut: {other:?}"),
    }
    let _ = dripper.join();
    (reply, took)
}

#[test]
fn slow_data_is_cut_with_421_and_nothing_is_stored() {
    let _turn = turn();
    let mut gw = GatewayProcess::builder(gateway())
        .smtp_settings(
            "data_deadline = \"6s\"\nmin_data_rate = 100\nmin_data_rate_grace = \"2s\"\n",
        )
        .start()
        .expect("start the gateway");

    // One byte a second from the start: below 100 octets a second.
    let mut c = Smtp::connect(gw.smtp).expect("connect");
    c.begin_data().expect("DATA");
    let writer = c.writer_clone().expect("clone");
    let (rate_reply, rate_took) = drip_until_cut(&mut c, writer);

    // 200 KB at once (on disk in a temporary file), then a drip: the rate
    // stays above the minimum, the DATA deadline cuts it.
    let mut c = Smtp::connect(gw.smtp).expect("connect");
    c.begin_data().expect("DATA");
    let line = format!("{}\r\n", "p".repeat(98));
    c.send(line.repeat(2000).as_bytes()).expect("send");
    let wait = Instant::now();
    while tmp_files(gw.spool_dir()) == 0 && wait.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let tmp_during = tmp_files(gw.spool_dir());
    let writer = c.writer_clone().expect("clone");
    let (deadline_reply, deadline_took) = drip_until_cut(&mut c, writer);

    let metrics = gw.metrics().expect("metrics");
    let counted = |reason: &str| {
        metric_value(
            &metrics,
            "lifecycle_sessions_cut_total",
            &[("protocol", "smtp"), ("reason", reason)],
        )
    };
    // The log trails the replies the clients saw: wait for both lines.
    let logged = gw.wait_log_count(2, Duration::from_secs(30), |l| {
        l.contains(r#""msg":"session cut""#)
    });
    figure(
        "deadlines",
        &format!(
            "drip cut after {rate_took:?}: {:?}; part+drip cut after {deadline_took:?} (tmp files during: {tmp_during}): {:?}; \
             cut counted min_data_rate={:?} data_deadline={:?}; logged {logged}",
            rate_reply.trim_end(),
            deadline_reply.trim_end(),
            counted("min_data_rate"),
            counted("data_deadline"),
        ),
    );
    assert_eq!(
        rate_reply,
        "421 4.4.2 gw.test data rate below 100 octets per second, closing connection\r\n"
    );
    assert_eq!(
        deadline_reply,
        "421 4.4.2 gw.test data deadline of 6s exceeded, closing connection\r\n"
    );
    assert_eq!(tmp_during, 1, "the partial message was in a temporary file");
    assert!(spool_files(gw.spool_dir()).is_empty(), "nothing is stored");
    assert_eq!(tmp_files(gw.spool_dir()), 0, "the temporary file is gone");
    assert_eq!(counted("min_data_rate"), Some(1.0));
    assert_eq!(counted("data_deadline"), Some(1.0));
    assert_eq!(logged, 2, "each cut is logged with its reason");
    assert_no_panic(&gw);
    gw.signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    assert!(gw
        .wait_exit(Duration::from_secs(30))
        .expect("wait")
        .is_some_and(|s| s.success()));
}
