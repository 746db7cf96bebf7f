//! Churn: 100,000 short SMTP and IMAP sessions, every tenth reset with
//! SO_LINGER 0; with a SIGTERM at the half, and without (no fd leak).

use std::time::{Duration, Instant};

use lifecycle_tests::{json_number, metric_value, GatewayProcess};

use super::{
    assert_no_panic, figure, graced_gateway, kv, live, scaled, terminate, turn, LoadClient, ABORT,
    DRAIN,
};

const TOTAL: usize = 100_000;
const CONCURRENCY: usize = 32;
/// The issue's bound on the load itself.
const LOAD_WITHIN: Duration = Duration::from_secs(60);

fn churn_client(gw: &GatewayProcess, total: usize) -> LoadClient {
    LoadClient::spawn(&[
        "churn".into(),
        gw.smtp.to_string(),
        gw.imap.to_string(),
        total.to_string(),
        CONCURRENCY.to_string(),
    ])
}

fn opened(gw: &GatewayProcess) -> usize {
    gw.count_logs(|l| l.contains(r#""msg":"connection open""#))
}

fn closed(gw: &GatewayProcess) -> usize {
    gw.count_logs(|l| l.contains(r#""msg":"connection closed""#))
}

#[test]
fn churn_with_sigterm_at_the_half_stops_cleanly() {
    let _turn = turn();
    let total = scaled(TOTAL);
    let mut gw = graced_gateway();
    let mut client = churn_client(&gw, total);
    client.expect("half", Duration::from_secs(300));
    // Announce the signal first: sessions the client saw end before the
    // acknowledgement ended before the signal.
    client.ask("term", "term-ack", Duration::from_secs(10));
    let (status, exit_after) = terminate(&mut gw, DRAIN + ABORT + Duration::from_secs(20));
    // From here on the port is free: a connect can only be refused, or
    // reach whatever bound the port since (another program's listener that
    // never greets would look like a hung session). The client starts no
    // more sessions; it may have finished already, so no answer is awaited.
    client.tell("exited");
    let result = client.expect("result", Duration::from_secs(300));
    client.finish();
    assert!(
        gw.wait_log_end(Duration::from_secs(60)),
        "the log did not end"
    );
    let stopped = gw
        .wait_phase("stopped", Duration::from_secs(5))
        .expect("a stopped phase line");
    let (open, close) = (opened(&gw), closed(&gw));
    figure(
        "churn_sigterm",
        &format!(
            "{result}; server: opened={open} closed={close} exit={status} after {exit_after:?}; {stopped}"
        ),
    );

    assert_eq!(status.code(), Some(0), "exit status");
    assert!(
        exit_after <= DRAIN + ABORT + Duration::from_secs(1),
        "exit {exit_after:?} after SIGTERM, bound {:?} + 1 s",
        DRAIN + ABORT
    );
    let stop_ms = json_number(&stopped, "elapsed_ms").expect("elapsed_ms");
    assert!(
        u128::try_from(stop_ms).unwrap_or(u128::MAX) <= (DRAIN + ABORT).as_millis(),
        "stopped {stop_ms} ms after the signal"
    );
    assert_eq!(json_number(&stopped, "left_open"), Some(0), "{stopped}");
    // Every session the server opened, it closed; none is left in a gauge.
    assert_eq!(open, close, "connection open vs closed lines");
    // Sessions that ended before the signal all went normally.
    for bad in ["draining", "refused", "cut", "timeout", "unexpected"] {
        assert_eq!(
            kv(&result, &format!("before_{bad}")),
            0,
            "before_{bad}: {result}"
        );
    }
    let before = kv(&result, "before_ok") + kv(&result, "before_reset");
    assert!(
        before >= (total / 2) as u64,
        "{before} sessions before the half"
    );
    // After it: a clean refusal (421, BYE, connection refused), a
    // completed session, or a cut by the abort; never a hang or garbage.
    assert_eq!(kv(&result, "after_timeout"), 0, "{result}");
    assert_eq!(kv(&result, "after_unexpected"), 0, "{result}");
    let all: u64 = [
        "ok",
        "reset",
        "draining",
        "refused",
        "cut",
        "timeout",
        "unexpected",
    ]
    .iter()
    .map(|k| kv(&result, &format!("before_{k}")) + kv(&result, &format!("after_{k}")))
    .sum();
    assert_eq!(
        all + kv(&result, "skipped"),
        total as u64,
        "every session accounted for"
    );
    assert!(
        open as u64 >= before,
        "the server opened every early session"
    );
    assert_no_panic(&gw);
}

#[test]
fn churn_without_shutdown_leaks_no_descriptor() {
    let _turn = turn();
    let total = scaled(TOTAL);
    let gw = graced_gateway();
    let stats = gw.stats();
    // Warm the HTTP worker up so that the count before and after compare
    // like with like.
    gw.metrics().expect("metrics");
    std::thread::sleep(Duration::from_millis(200));
    let fds_before = stats.open_fds().expect("fd count");

    let mut client = churn_client(&gw, total);
    let result = client.expect("result", Duration::from_secs(300));
    client.finish();

    // The server may still be closing the last sessions: wait for the
    // gauges, then for the descriptors.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut metrics = gw.metrics().expect("metrics");
    while live(&metrics) != 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        metrics = gw.metrics().expect("metrics");
    }
    let mut fds_after = stats.open_fds().expect("fd count");
    while fds_after != fds_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        fds_after = stats.open_fds().expect("fd count");
    }
    let accepted = |p: &str| {
        metric_value(
            &metrics,
            "lifecycle_connections_accepted_total",
            &[("protocol", p)],
        )
        .unwrap_or(-1.0) as i64
    };
    let (smtp_connected, imap_connected) =
        (kv(&result, "smtp_connected"), kv(&result, "imap_connected"));
    let connected = usize::try_from(smtp_connected + imap_connected).unwrap_or(usize::MAX);
    // The log trails the sessions: wait for it (more lines than expected
    // are seen as well, the wait only ends early).
    let close = gw.wait_log_count(connected, Duration::from_secs(60), |l| {
        l.contains(r#""msg":"connection closed""#)
    });
    let open = opened(&gw);
    figure(
        "churn_no_shutdown",
        &format!(
            "{result}; server: accepted smtp={} imap={} opened={open} closed={close} \
             live={} fds before={fds_before} after={fds_after} rss_kib={}",
            accepted("smtp"),
            accepted("imap"),
            live(&metrics),
            stats.status_kib("VmHWM").unwrap_or(0),
        ),
    );

    for bad in ["draining", "refused", "cut", "timeout", "unexpected"] {
        assert_eq!(
            kv(&result, &format!("before_{bad}")),
            0,
            "before_{bad}: {result}"
        );
    }
    assert_eq!(
        kv(&result, "before_ok") + kv(&result, "before_reset"),
        total as u64,
        "{result}"
    );
    assert_eq!(
        kv(&result, "before_reset"),
        (total / 10) as u64,
        "every tenth session was reset"
    );
    assert!(
        Duration::from_millis(kv(&result, "elapsed_ms")) <= LOAD_WITHIN || total < TOTAL,
        "the load took longer than {LOAD_WITHIN:?}: {result}"
    );
    assert_eq!(live(&metrics), 0.0, "gauges after the load:\n{metrics}");
    assert_eq!(accepted("smtp"), smtp_connected as i64, "smtp accepted");
    assert_eq!(accepted("imap"), imap_connected as i64, "imap accepted");
    assert_eq!(open as u64, smtp_connected + imap_connected, "open lines");
    assert_eq!(close, open, "closed lines");
    assert_eq!(fds_after, fds_before, "open descriptors before and after");
    assert_no_panic(&gw);
}
