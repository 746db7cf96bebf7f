//! Descriptor exhaustion: with RLIMIT_NOFILE 256 and 1,000 clients, the
//! gateway keeps serving the connections it has, answers each excess
//! client with the busy reply from its reserve descriptor instead of
//! leaving it in the backlog (issue 14), does not spin, logs the condition
//! once, and serves again once clients leave.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use lifecycle_tests::GatewayProcess;

use super::smtp::spool_files;
use super::{assert_no_panic, figure, gateway, kv, scaled, turn, LoadClient};

const LIMIT: u64 = 256;
const CLIENTS: usize = 1_000;
const WINDOW: Duration = Duration::from_secs(5);
/// CPU the process may use during the window (the bound).
const CPU_BOUND: f64 = 0.5;
/// Log lines the process may write during the window.
const LOG_BOUND: usize = 10;
/// Connections kept (and probed) through the exhaustion.
const KEEP: usize = 5;

#[test]
fn descriptor_exhaustion_backs_off_and_recovers() {
    let _turn = turn();
    let clients = scaled(CLIENTS).max(LIMIT as usize * 2);
    let gw = GatewayProcess::builder(gateway())
        .nofile_limit(LIMIT)
        .start()
        .expect("start the gateway");
    let stats = gw.stats();
    let mut client = LoadClient::spawn(&["hold".into(), format!("{}={clients}", gw.smtp)]);
    let held = client.expect("held", Duration::from_secs(120));
    assert_eq!(kv(&held, "connected"), clients as u64, "{held}");
    let warned = gw
        .wait_log(Duration::from_secs(30), |l| l.contains("out of resources"))
        .unwrap_or_else(|| panic!("no exhaustion logged:\n{}", gw.log_tail(20)));
    // Nobody is left waiting: every client was greeted or answered busy
    // and closed.
    let busy = client.ask("busy 60000", "busy", Duration::from_secs(120));
    let greeted = client.ask("greeted 1000", "greeted", Duration::from_secs(60));
    let greeted_n = kv(&greeted.replace("greeted ", "greeted="), "greeted");

    // The window: nothing changes, the accept loop must sleep.
    let cpu_before = stats.cpu_seconds().expect("cpu");
    let log_before = gw.log_len();
    std::thread::sleep(WINDOW);
    let cpu = stats.cpu_seconds().expect("cpu") - cpu_before;
    let log_lines = gw.log_len() - log_before;
    let fds = stats.open_fds().expect("fds");

    // It keeps serving the connections it has.
    let probe = client.ask(&format!("probe {KEEP}"), "probe", Duration::from_secs(60));
    // A message it cannot store (no descriptor for the spool file) is
    // answered 452, never 250.
    let delivered = client.ask("deliver 1", "deliver", Duration::from_secs(60));
    let stored_while_exhausted = spool_files(gw.spool_dir()).len();

    // Clients leave: it accepts again, and a new client is served.
    let released = client.ask(
        &format!("release-except {KEEP}"),
        "released",
        Duration::from_secs(60),
    );
    // Nobody waits in the backlog any more (the excess clients were
    // answered): the newcomer is the next accept, which ends the burst.
    let newcomer = TcpStream::connect(gw.smtp).expect("connect after recovery");
    newcomer
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut greeting = String::new();
    let _ = BufReader::new(&newcomer).read_line(&mut greeting);
    let recovered = gw
        .wait_log(Duration::from_secs(30), |l| l.contains("accepting again"))
        .is_some();
    // Counted by reason (read now: while out of descriptors the HTTP
    // listener could not take the scrape either).
    let refused = gw
        .metrics()
        .ok()
        .and_then(|m| {
            lifecycle_tests::metric_value(
                &m,
                "lifecycle_refused_total",
                &[
                    ("listener", "smtp"),
                    ("protocol", "smtp"),
                    ("reason", "descriptors"),
                ],
            )
        })
        .unwrap_or(-1.0);
    let warnings = gw.count_logs(|l| l.contains("out of resources"));
    // The queue drains (released clients are accepted, then closed):
    // wait for the gauge to show the kept ones and the newcomer.
    let deadline = Instant::now() + Duration::from_secs(30);
    let live = loop {
        let live: f64 = gw.metrics().map(|m| super::live(&m)).unwrap_or(-1.0);
        if live as usize == KEEP + 1 || Instant::now() > deadline {
            break live;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    client.finish();
    figure(
        "descriptor_exhaustion",
        &format!(
            "RLIMIT_NOFILE={LIMIT}; {held}; {busy}; refused{{descriptors}}={refused}; {greeted}; fds in use={fds}; during {WINDOW:?} of \
             exhaustion: cpu={cpu:.3}s log lines={log_lines}; {probe} of {KEEP}; {delivered} (files stored: {stored_while_exhausted}); {released}; \
             exhaustion warnings in the whole log={warnings}; recovered={recovered}; \
             newcomer greeting={:?}; live afterwards={live}; first warning: {warned}",
            greeting.trim_end()
        ),
    );
    assert!(greeted_n > 0 && greeted_n < LIMIT, "{greeted}");
    assert_eq!(kv(&busy, "silent"), 0, "clients left waiting: {busy}");
    assert_eq!(
        kv(&busy, "busy") + kv(&busy, "greeted"),
        clients as u64,
        "{busy}"
    );
    assert_eq!(kv(&busy, "greeted"), greeted_n, "{busy}; {greeted}");
    assert_eq!(
        kv(&busy, "closed"),
        kv(&busy, "busy"),
        "closed by the server: {busy}"
    );
    assert_eq!(
        refused,
        kv(&busy, "busy") as f64,
        "refusals counted: {busy}"
    );
    assert!(
        cpu < CPU_BOUND,
        "{cpu:.3} s of CPU during {WINDOW:?} of exhaustion"
    );
    assert!(
        log_lines <= LOG_BOUND,
        "{log_lines} log lines during the window"
    );
    assert_eq!(
        kv(&probe, "ok"),
        KEEP as u64,
        "kept connections served: {probe}"
    );
    assert!(
        delivered.starts_with("deliver 452 "),
        "a message sent while out of descriptors: {delivered}"
    );
    assert_eq!(stored_while_exhausted, 0, "spool files while exhausted");
    assert!(recovered, "no `accepting again` line:\n{}", gw.log_tail(20));
    assert!(greeting.starts_with("220 "), "newcomer got {greeting:?}");
    assert_eq!(
        live as usize,
        KEEP + 1,
        "live connections after the others left"
    );
    assert!(
        warnings <= 3,
        "{warnings} exhaustion warnings: the log is flooded"
    );
    assert_no_panic(&gw);
}
