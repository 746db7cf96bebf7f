//! Delivery end to end against the real binary: swaks sends a message and
//! it is in the spool exactly once; the connection gauge follows a client;
//! promtool accepts /metrics.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{occurrences, sample, Client, Gateway, SOON};
use lifecycle_tests::{loud, require_tool};

#[test]
fn swaks_delivers_a_message_that_is_spooled_exactly_once() {
    if !require_tool("swaks") {
        return;
    }
    let gw = Gateway::start("3s", "1s");
    let token = format!("e2e-token-{}-{:?}", std::process::id(), Instant::now());
    let out = Command::new("swaks")
        .args(["--server", &gw.smtp.to_string()])
        .args(["--from", "sender@example.org", "--to", "rcpt@example.net"])
        .args(["--helo", "client.example", "--header", "Subject: e2e"])
        .args(["--body", &token])
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "swaks failed: {transcript}\n{}",
        gw.log_text()
    );
    let queued = transcript
        .lines()
        .find(|l| l.contains("250 2.0.0 ok: queued as "))
        .unwrap_or_else(|| panic!("no 250 for DATA in:\n{transcript}"));
    let id = queued.trim().rsplit(' ').next().unwrap();

    let messages = gw.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(
        messages[0].ends_with(format!("{id}.eml")),
        "{messages:?} vs {id}"
    );
    let stored = std::fs::read(&messages[0]).unwrap();
    assert_eq!(occurrences(&stored, token.as_bytes()), 1);
    assert!(stored
        .starts_with(b"Return-Path: <sender@example.org>\r\nDelivered-To: rcpt@example.net\r\n"));
    assert_eq!(occurrences(&stored, b"Subject: e2e\r\n"), 1);
    assert_eq!(gw.temp_files(), 0, "a temporary file was left in the spool");
}

fn curl_metrics(gw: &Gateway) -> String {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--fail", "--max-time", "20"])
        .arg(format!("http://{}/metrics", gw.http))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn smtp_gauge(metrics: &str) -> f64 {
    sample(
        metrics,
        "lifecycle_connections",
        &[("protocol", "smtp"), ("listener", "smtp")],
    )
    .unwrap_or(0.0)
}

#[test]
fn the_connection_gauge_follows_a_client_as_curl_sees_it() {
    if !require_tool("curl") {
        return;
    }
    let gw = Gateway::start("3s", "1s");
    assert_eq!(smtp_gauge(&curl_metrics(&gw)), 0.0);

    let mut client = Client::connect(gw.smtp);
    client.expect("220 gw.test ESMTP");
    let with_client = curl_metrics(&gw);
    assert_eq!(
        sample(
            &with_client,
            "lifecycle_connections",
            &[("protocol", "smtp"), ("listener", "smtp")]
        ),
        Some(1.0),
        "{with_client}"
    );

    client.send("QUIT\r\n");
    client.expect("221");
    assert_eq!(client.line(), "", "the server closes after QUIT");
    // Unregistering is asynchronous (the guard's drop sends a message): poll.
    let deadline = Instant::now() + SOON;
    let mut last = curl_metrics(&gw);
    while smtp_gauge(&last) != 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        last = curl_metrics(&gw);
    }
    assert_eq!(smtp_gauge(&last), 0.0, "{last}");
    assert_eq!(
        sample(
            &last,
            "lifecycle_connections_accepted_total",
            &[("protocol", "smtp"), ("listener", "smtp")]
        ),
        Some(1.0)
    );
}

#[test]
fn promtool_accepts_the_metrics() {
    if !require_tool("promtool") {
        return;
    }
    let gw = Gateway::start("3s", "1s");
    // One session per protocol so every family has samples.
    let mut smtp = Client::connect(gw.smtp);
    smtp.expect("220");
    smtp.send("EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n");
    smtp.expect("250-");
    smtp.expect("250");
    smtp.expect("250");
    smtp.expect("354");
    smtp.send("hello\r\n.\r\nQUIT\r\n");
    smtp.expect("250");
    smtp.expect("221");
    let mut imap = Client::connect(gw.imap);
    assert!(imap.line().starts_with("* OK"));
    imap.send("a LOGOUT\r\n");
    assert!(imap.line().starts_with("* BYE"));

    let metrics = gw.metrics();
    assert!(
        metrics.contains("lifecycle_smtp_messages_total{outcome=\"accepted\"} 1"),
        "{metrics}"
    );
    let path = gw.dir().join("metrics.txt");
    std::fs::write(&path, &metrics).unwrap();
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    loud(&format!(
        "promtool check metrics: {} {}",
        out.status,
        report.trim()
    ));
    assert!(
        out.status.success(),
        "promtool rejected /metrics:\n{report}\n{metrics}"
    );
}

#[test]
fn curl_probes_imap_and_the_health_endpoints() {
    if !require_tool("curl") {
        return;
    }
    let gw = Gateway::start("3s", "1s");
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .arg(format!("imap://{}/", gw.imap))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl imap: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for (path, body) in [("healthz", "ok\n"), ("readyz", "ready\n")] {
        let out = Command::new("curl")
            .args(["--silent", "--fail", "--max-time", "20"])
            .arg(format!("http://{}/{path}", gw.http))
            .output()
            .unwrap();
        assert!(out.status.success(), "/{path}: {}", out.status);
        assert_eq!(String::from_utf8_lossy(&out.stdout), body);
    }
    let closed = gw.wait_log(SOON, |l| {
        l.contains(r#""msg":"connection closed""#) && l.contains(r#""protocol":"imap""#)
    });
    assert!(closed.is_some_and(|l| l.contains(r#""reason":"quit""#)));
}

/// Peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_100_mib_message_over_the_limit_is_refused_without_being_held() {
    let gw = Gateway::start_with("3s", "1s", "max_message_size = 1048576");
    let pid = gw.service_pid();
    let mut c = Client::connect(gw.smtp);
    c.expect("220");
    c.send("EHLO x\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@x>\r\nDATA\r\n");
    c.expect("250-");
    c.expect("250 2.1.0");
    c.expect("250 2.1.5");
    c.expect("354");
    let before = peak_rss_kib(pid);
    let line = format!("{}\r\n", "x".repeat(78));
    let chunk = line.repeat(64 * 1024 / line.len());
    let total = 100 * 1024 * 1024;
    let mut sent = 0;
    while sent < total {
        c.send(&chunk);
        sent += chunk.len();
    }
    c.send(".\r\n");
    c.expect("552 5.3.4");
    c.send("QUIT\r\n");
    c.expect("221");
    let after = peak_rss_kib(pid);
    loud(&format!(
        "100 MiB DATA over a 1 MiB limit: peak RSS {before} KiB before, {after} KiB after"
    ));
    // Holding the message would add 100 MiB; the limit alone allows 1 MiB.
    assert!(
        after < before + 16 * 1024,
        "peak RSS grew from {before} to {after} KiB"
    );
    assert!(gw.messages().is_empty());
}

#[test]
fn smtp_source_and_curl_deliver_every_message() {
    let gw = Gateway::start("3s", "1s");
    let mut expected = 0;
    if require_tool("smtp-source") {
        // 40 messages of 2000 octets over 5 parallel sessions.
        let out = Command::new("smtp-source")
            .args(["-s", "5", "-m", "40", "-l", "2000"])
            .args(["-f", "a@x.example", "-t", "b@y.example"])
            .arg(gw.smtp.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "smtp-source: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        expected += 40;
        assert_eq!(gw.messages().len(), expected);
        for m in gw.messages() {
            assert!(std::fs::metadata(&m).unwrap().len() >= 2000, "{m:?}");
        }
    }
    if require_tool("curl") {
        let body = gw.dir().join("message.txt");
        std::fs::write(&body, "Subject: curl\r\n\r\nsent by curl\r\n").unwrap();
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "20"])
            .arg(format!("smtp://{}", gw.smtp))
            .args([
                "--mail-from",
                "a@x.example",
                "--mail-rcpt",
                "b@y.example",
                "-T",
            ])
            .arg(&body)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl smtp: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        expected += 1;
        let found = gw
            .messages()
            .iter()
            .filter(|m| occurrences(&std::fs::read(m).unwrap(), b"sent by curl\r\n") == 1)
            .count();
        assert_eq!(found, 1);
    }
    assert_eq!(gw.messages().len(), expected);
    assert_eq!(gw.temp_files(), 0);
}
