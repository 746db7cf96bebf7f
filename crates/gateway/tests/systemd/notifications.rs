//! Notifications in immediate mode: `READY=1` once every listener
//! accepts, `STATUS=` with live counts, `STOPPING=1`, watchdog pings; and
//! the silent child of a privileged parent.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use lifecycle_tests::{free_port, loud, require_root, NotifySocket, Probe};
use nix::sys::signal::Signal;

use crate::common::Client;
use crate::common::{self, field, BIN, SOON};
use crate::{config, greeted, notify_socket, service_dir, Running};

#[test]
fn immediate_mode_notifies_ready_status_and_stopping() {
    let dir = service_dir();
    let port = |_| format!("127.0.0.1:{}", free_port().unwrap());
    let [smtp, imap, http]: [String; 3] = [0, 1, 2].map(port);
    let addrs: Vec<SocketAddr> = [&smtp, &imap, &http]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    // The moment READY=1 arrives: SMTP and IMAP greet, HTTP connects.
    let probe_addrs = addrs.clone();
    let probe: Probe = Box::new(move || {
        for (addr, greeting) in probe_addrs.iter().zip(["220 ", "* OK", ""]) {
            let stream = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
            if greeting.is_empty() {
                continue;
            }
            stream
                .set_read_timeout(Some(SOON))
                .map_err(|e| e.to_string())?;
            let mut line = String::new();
            BufReader::new(stream)
                .read_line(&mut line)
                .map_err(|e| format!("{addr}: {e}"))?;
            if !line.starts_with(greeting) {
                return Err(format!("{addr} greeted {line:?}"));
            }
        }
        Ok(())
    });
    let systemd = NotifySocket::bind_at(&dir.path().join("notify.sock"))
        .unwrap()
        .record_with_probe(Some(probe));
    let cfg = config(
        dir.path(),
        "",
        &[
            ("smtp", "smtp", &smtp),
            ("imap", "imap", &imap),
            ("http", "http", &http),
        ],
    );
    let notify_socket = systemd.path().to_str().unwrap().to_owned();
    let mut gw = Running::gateway(dir.path(), &cfg, &[("NOTIFY_SOCKET", &notify_socket)]);

    let ready = systemd
        .wait(SOON, |d| d.has_line("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; log:\n{}", gw.log_text()));
    // Every listener answered right when READY=1 arrived.
    let probed = systemd.probed();
    assert_eq!(probed, Some(Ok(())), "{}", gw.log_text());
    let started = gw.wait_msg("starting");
    assert_eq!(field(&started, "mode").as_deref(), Some("immediate"));
    // READY=1 came from the gateway itself, once.
    assert_eq!(ready.pid, gw.pid());
    assert_eq!(systemd.with_prefix("READY=1").len(), 1);
    // /readyz agrees.
    let mut web = TcpStream::connect(addrs[2]).unwrap();
    std::io::Write::write_all(&mut web, b"GET /readyz HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut web, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let smtp = addrs[0];
    let mut first = greeted(smtp);
    let mut mailbox = Client::connect(addrs[1]);
    assert!(mailbox.line().starts_with("* OK"));

    // STATUS= carries the live connections per listener.
    let counted = systemd
        .wait(SOON, |d| {
            d.text
                .contains("STATUS=running: 2 connections (imap 1, smtp 1)")
        })
        .unwrap_or_else(|| panic!("no STATUS with both connections: {:?}", systemd.all()));
    assert_eq!(counted.pid, gw.pid());
    drop(mailbox);
    let mut second = greeted(smtp);
    systemd
        .wait(SOON, |d| {
            d.text.contains("STATUS=running: 2 connections (smtp 2)")
        })
        .unwrap_or_else(|| panic!("no STATUS with two smtp: {:?}", systemd.all()));
    first.send("QUIT\r\n");
    first.expect("221");
    second.send("QUIT\r\n");
    second.expect("221");
    systemd
        .wait(SOON, |d| d.text.contains("STATUS=running: 0 connections"))
        .unwrap_or_else(|| panic!("no STATUS back at 0: {:?}", systemd.all()));

    // At most one STATUS= a second, however fast the counts change.
    let burst_start = SystemTime::now();
    let churn = Instant::now();
    let mut open = Vec::new();
    // The count changes every few milliseconds: one more connection each
    // time, all closed at the end.
    while churn.elapsed() < Duration::from_millis(2500) {
        open.push(greeted(smtp));
        std::thread::sleep(Duration::from_millis(20));
    }
    let opened = open.len();
    drop(open);
    std::thread::sleep(Duration::from_millis(1500));
    let window = SystemTime::now().duration_since(burst_start).unwrap();
    let in_burst = systemd
        .with_prefix("STATUS=")
        .iter()
        .filter(|d| d.at >= burst_start)
        .count();
    let allowed = window.as_secs() as usize + 2;
    loud(&format!(
        "STATUS= during {window:?} while {opened} connections opened: {in_burst} (allowed {allowed})"
    ));
    assert!(
        (2..=allowed).contains(&in_burst),
        "{in_burst} STATUS= in {window:?}: {:?}",
        systemd.with_prefix("STATUS=")
    );

    // SIGTERM: STOPPING=1 from the gateway, then a clean exit.
    assert!(systemd.with_prefix("STOPPING=1").is_empty());
    gw.signal(Signal::SIGTERM);
    let stopping = systemd
        .wait(SOON, |d| d.has_line("STOPPING=1"))
        .unwrap_or_else(|| panic!("no STOPPING=1; log:\n{}", gw.log_text()));
    assert_eq!(stopping.pid, gw.pid());
    assert!(stopping.at >= ready.at);
    let status = gw.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", gw.log_text());
    // No watchdog was asked for: no pings.
    assert!(systemd.with_prefix("WATCHDOG=1").is_empty());
    // Every datagram came from the gateway.
    assert!(systemd.all().iter().all(|d| d.pid == gw.pid()));
}

#[test]
fn watchdog_usec_makes_the_gateway_ping() {
    let dir = service_dir();
    let systemd = notify_socket(dir.path());
    let cfg = config(dir.path(), "", &[("smtp", "smtp", "127.0.0.1:0")]);
    let notify_socket = systemd.path().to_str().unwrap().to_owned();
    // 400 ms: a ping every 200 ms.
    let mut gw = Running::gateway(
        dir.path(),
        &cfg,
        &[
            ("NOTIFY_SOCKET", &notify_socket),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    systemd
        .wait(SOON, |d| d.has_line("READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; log:\n{}", gw.log_text()));
    let deadline = Instant::now() + SOON;
    while systemd.with_prefix("WATCHDOG=1").len() < 5 {
        assert!(
            Instant::now() < deadline,
            "fewer than 5 WATCHDOG=1: {:?}\n{}",
            systemd.all(),
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    gw.signal(Signal::SIGTERM);
    assert_eq!(gw.wait_exit().code(), Some(0), "{}", gw.log_text());
    assert_eq!(systemd.with_prefix("STOPPING=1").len(), 1);
    let pings = systemd.with_prefix("WATCHDOG=1");
    assert!(pings.iter().all(|d| d.pid == gw.pid()), "{pings:?}");
    // At half the interval, not more often: a ping at start, then one per
    // 200 ms (a cap, with room for one more at each end).
    let (first, last) = (pings[0].at, pings[pings.len() - 1].at);
    let span = last.duration_since(first).unwrap_or_default();
    let cap = (span.as_millis() / 200) as usize + 2;
    loud(&format!(
        "WATCHDOG_USEC=400000: {} pings over {span:?} (cap {cap})",
        pings.len()
    ));
    assert!(pings.len() <= cap, "{} pings over {span:?}", pings.len());
}

#[test]
fn the_child_of_a_privileged_parent_stays_silent() {
    if !require_root("starting the gateway's privileged parent") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let systemd = notify_socket(dir.path());
    // The root parent creates the spool for `nobody`.
    let cfg = config(
        dir.path(),
        "user = \"nobody\"",
        &[("smtp", "smtp", "127.0.0.1:0")],
    );
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let notify_socket = systemd.path().to_str().unwrap().to_owned();
    let mut command = Command::new(BIN);
    command.arg("--config").arg(&cfg).current_dir(dir.path());
    let mut gw = Running::spawn(&mut command, &[("NOTIFY_SOCKET", &notify_socket)]);
    let child_start = gw
        .wait_log(SOON, |l| {
            l.contains(r#""msg":"starting""#) && l.contains(r#""mode":"inherited""#)
        })
        .unwrap_or_else(|| panic!("no child start line:\n{}", gw.log_text()));
    let child_pid = common::number(&child_start, "pid").unwrap();
    gw.wait_msg("ready");
    let mut c = greeted(gw.listener("smtp"));
    c.send("QUIT\r\n");
    c.expect("221");
    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", gw.log_text());
    // The parent may speak for the service; the child never does.
    let got = systemd.all();
    loud(&format!(
        "privileged start: {} datagram(s), all from the parent {}",
        got.len(),
        gw.pid()
    ));
    assert!(
        got.iter().all(|d| d.pid == gw.pid()),
        "child {child_pid} notified: {got:?}"
    );
}
