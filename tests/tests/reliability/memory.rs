//! Bounded memory per session (issue 14): 200 sessions each 8 MiB into
//! DATA at the same time. The gateway streams every body to its spool
//! file through a fixed buffer, so its resident memory stays within its
//! idle size + 64 MiB; then every message completes, is stored once, and
//! byte for byte.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use lifecycle_tests::GatewayProcess;

use super::smtp::{spool_files, spooled, without_trace};
use super::{assert_no_panic, default_gateway, figure, kib, kv, scaled, turn, LoadClient};

const SESSIONS: usize = 200;
const SIZE: usize = 8 << 20;
/// How much the serving process may grow over its idle size.
const GROWTH_BOUND_KIB: u64 = 64 << 10;

/// Bytes in the spool's temporary files.
fn tmp_bytes(gw: &GatewayProcess) -> u64 {
    std::fs::read_dir(gw.spool_dir().join("tmp"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn sessions_in_data_hold_bounded_memory_and_every_message_is_stored_once() {
    let _turn = turn();
    let sessions = scaled(SESSIONS);
    let mut gw = default_gateway();
    let stats = gw.stats();
    let idle = kib(&stats, "VmRSS");

    let started = Instant::now();
    let mut client = LoadClient::spawn(&[
        "data".to_owned(),
        gw.smtp.to_string(),
        sessions.to_string(),
        SIZE.to_string(),
    ]);
    let mid = client.expect("mid ", Duration::from_secs(600));
    assert_eq!(kv(&mid, "sent"), sessions as u64, "{mid}");
    let sent_in = started.elapsed();
    // Whatever the kernel still buffers, most of every body reaches the
    // spool before any final dot (nothing is kept whole in memory).
    let total = (sessions * SIZE) as u64;
    let wait = Instant::now();
    while tmp_bytes(&gw) < total * 3 / 4 && wait.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let on_disk = tmp_bytes(&gw);
    let rss_mid = kib(&stats, "VmRSS");
    let hwm_mid = kib(&stats, "VmHWM");

    client.send("finish");
    let mut queued: HashMap<String, usize> = HashMap::new();
    let result = loop {
        let line = client
            .lines
            .recv_timeout(Duration::from_secs(600))
            .expect("a line from the client");
        if let Some(rest) = line.strip_prefix("queued ") {
            let (i, id) = rest.split_once(' ').expect("queued I ID");
            queued.insert(id.to_owned(), i.parse().expect("index"));
        } else if line.starts_with("failed ") {
            eprintln!("{line}");
        } else if line.starts_with("result ") {
            break line;
        }
    };
    let all_in = started.elapsed();
    client.finish();
    let hwm_end = kib(&stats, "VmHWM");
    let per_session = rss_mid.saturating_sub(idle) * 1024 / sessions as u64;
    figure(
        "memory",
        &format!(
            "{sessions} sessions x {} MiB in DATA at once: VmRSS kiB idle={idle} mid-transfer={rss_mid} \
             (+{} kiB, {per_session} bytes per session), VmHWM mid={hwm_mid} end={hwm_end}; \
             {} MiB in tmp/ before any final dot; bodies sent in {sent_in:?}, all acknowledged in {all_in:?}; {result}",
            SIZE >> 20,
            rss_mid.saturating_sub(idle),
            on_disk >> 20,
        ),
    );
    assert_no_panic(&gw);
    assert!(
        hwm_mid <= idle + GROWTH_BOUND_KIB,
        "peak resident memory {hwm_mid} kiB while {sessions} sessions were in DATA: \
         more than idle {idle} kiB + {GROWTH_BOUND_KIB} kiB"
    );
    assert_eq!(kv(&result, "acked"), sessions as u64, "{result}");
    assert_eq!(queued.len(), sessions, "distinct queued ids");

    // Stored once each, byte for byte.
    let files = spool_files(gw.spool_dir());
    assert_eq!(files.len(), sessions, "spool files");
    for (id, path) in &files {
        let i = *queued
            .get(id)
            .unwrap_or_else(|| panic!("{} was never acknowledged", path.display()));
        let mut want = Vec::with_capacity(SIZE + 1024);
        for line in lifecycle_tests::message_lines(&format!("m{i}"), SIZE) {
            want.extend_from_slice(&line);
        }
        let got = std::fs::read(path).expect("read message");
        assert!(
            without_trace(&got) == spooled(&want),
            "{} (message {i}) differs from what was sent",
            path.display()
        );
    }
    assert_eq!(tmp_bytes(&gw), 0, "temporary files left");
    gw.signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let status = gw.wait_exit(Duration::from_secs(30)).expect("wait");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}
