//! Paced closing (issue 15 item 3): 1,000 idle IMAP sessions, then SIGTERM
//! with a 2 s drain: their `* BYE` is spread over the drain window instead
//! of all of them being cut in the same millisecond at its end, so that
//! their reconnects to other instances do not arrive as one storm. The
//! closes, as the clients see them, cover at least 1.5 s, and no 100 ms
//! window holds more than 15 % of them. Each session ended as `draining`
//! (it was told goodbye), none was aborted, and the process exits 0.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::{
    assert_no_panic, closed_for, exited, figure, graced_gateway, kv, live_now, scaled, turn,
    LoadClient,
};

const CLIENTS: usize = 1_000;
const WINDOW_MS: u64 = 100;

#[test]
fn idle_imap_sessions_are_told_goodbye_spread_over_the_drain() {
    let _turn = turn();
    let n = scaled(CLIENTS);
    let mut gw = graced_gateway();
    let mut client = LoadClient::spawn(&["hold".into(), format!("{}={n}", gw.imap)]);
    let held = client.expect("held", Duration::from_secs(120));
    assert_eq!(kv(&held, "connected"), n as u64, "{held}");

    // Every session is registered (and greeted) before the signal.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live = live_now(&gw);
        if live == n {
            break;
        }
        assert!(Instant::now() < deadline, "{live} of {n} registered");
        std::thread::sleep(Duration::from_millis(100));
    }

    client.send("close-times 30000");
    gw.signal(Signal::SIGTERM).expect("SIGTERM");
    let report = client.expect("close-times", Duration::from_secs(60));
    client.finish();
    let status = exited(&mut gw, Duration::from_secs(30));
    assert!(
        gw.wait_log_end(Duration::from_secs(60)),
        "the log did not end"
    );

    let mut times: Vec<u64> = report
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ms="))
        .unwrap_or("")
        .split(',')
        .filter_map(|t| t.parse().ok())
        .collect();
    times.sort_unstable();
    let (first, last) = (times.first().copied(), times.last().copied());
    let span = last.zip(first).map_or(0, |(l, f)| l - f);
    // Fixed 100 ms bins from the first close, for the figure.
    let mut bins = vec![0usize; (span / WINDOW_MS + 1) as usize];
    for t in &times {
        bins[((t - first.unwrap_or(0)) / WINDOW_MS) as usize] += 1;
    }
    // The fullest 100 ms window, wherever it starts.
    let busiest = (0..times.len())
        .map(|i| times[i..].partition_point(|t| *t < times[i] + WINDOW_MS))
        .max()
        .unwrap_or(0);
    let said_bye = closed_for(&gw, "draining");
    let aborted = closed_for(&gw, "aborted");
    figure(
        "paced_close",
        &format!(
            "{n} idle IMAP sessions, drain 2 s: closed={} open={} span={span} ms \
             busiest {WINDOW_MS} ms window={busiest} ({:.1} %); per {WINDOW_MS} ms from the first: {bins:?}; \
             sessions ended draining={said_bye} aborted={aborted}; exit={status}",
            kv(&report, "closed"),
            kv(&report, "open"),
            busiest as f64 * 100.0 / n as f64
        ),
    );
    assert_eq!(status.code(), Some(0), "exit status");
    assert_eq!(kv(&report, "open"), 0, "every session closed");
    assert_eq!(times.len(), n, "a close time per session");
    assert!(
        span >= 1500,
        "the closes cover {span} ms, not at least 1500 ms"
    );
    assert!(
        busiest * 100 <= n * 15,
        "{busiest} of {n} closes in one {WINDOW_MS} ms window (more than 15 %)"
    );
    assert_eq!(said_bye, n, "every session was told goodbye");
    assert_eq!(aborted, 0, "none was cut by the abort");
    assert_no_panic(&gw);
}
