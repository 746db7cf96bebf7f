//! Memory of idle connections (issue 19): 15,000 greeted connections that
//! stay silent (half SMTP, half IMAP, from a child process) cost the
//! serving process at most 4 KiB each over its idle size; every one of
//! them still answers when it speaks, and SIGTERM stops the service within
//! its grace, exit 0.

use std::time::{Duration, Instant};

use super::{
    assert_no_panic, figure, graced_gateway, kib, kv, live_now, scaled, terminate, turn,
    LoadClient, ABORT, DRAIN,
};

const IDLE: usize = 15_000;
/// What one idle connection may cost the serving process.
const PER_CONNECTION_KIB: u64 = 4;

#[test]
fn idle_connections_cost_at_most_4_kib_each_and_still_answer() {
    let _turn = turn();
    let per_protocol = scaled(IDLE) / 2;
    let n = per_protocol * 2;
    let mut gw = graced_gateway();
    let stats = gw.stats();
    let idle = kib(&stats, "VmRSS");

    let mut client = LoadClient::spawn(&[
        "hold".into(),
        format!("{}={per_protocol}", gw.smtp),
        format!("{}={per_protocol}", gw.imap),
    ]);
    let held = client.expect("held", Duration::from_secs(300));
    assert_eq!(kv(&held, "connected"), n as u64, "{held}");

    // Every connection is registered and greeted: its session waits for
    // the client.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let live = live_now(&gw);
        let greeted = client.ask("greeted 0", "greeted", Duration::from_secs(60));
        let greeted: usize = greeted
            .trim_start_matches("greeted ")
            .parse()
            .expect("greeted N");
        if (live == n && greeted == n) || Instant::now() > deadline {
            assert_eq!(live, n, "connections registered");
            assert_eq!(greeted, n, "connections greeted");
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let rss = kib(&stats, "VmRSS");
    let per_conn = rss.saturating_sub(idle) as f64 / n as f64;
    let bound = idle + n as u64 * PER_CONNECTION_KIB;

    let spoke = client.ask("speak", "speak", Duration::from_secs(300));
    let (status, exit_after) = terminate(&mut gw, DRAIN + ABORT + Duration::from_secs(30));
    client.finish();
    assert!(
        gw.wait_log_end(Duration::from_secs(60)),
        "the log did not end"
    );
    figure(
        "idle_memory",
        &format!(
            "{n} idle connections: VmRSS {idle} KiB idle -> {rss} KiB held \
             ({per_conn:.2} KiB per connection, bound {PER_CONNECTION_KIB} KiB); \
             {spoke}; exit={status} after {exit_after:?}"
        ),
    );
    assert!(
        rss <= bound,
        "VmRSS {rss} KiB with {n} idle connections, over idle {idle} KiB + \
         {n} x {PER_CONNECTION_KIB} KiB = {bound} KiB ({per_conn:.2} KiB each)"
    );
    assert_eq!(kv(&spoke, "answered"), n as u64, "{spoke}");
    assert_eq!(status.code(), Some(0), "exit status");
    assert!(
        exit_after <= DRAIN + ABORT + Duration::from_secs(1),
        "exit {exit_after:?} after SIGTERM; bound {:?} + 1 s",
        DRAIN + ABORT
    );
    assert_no_panic(&gw);
}
