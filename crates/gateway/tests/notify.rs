//! systemd notification in the privileged start, for real (as root; skipped
//! with a printed reason otherwise): the test plays systemd with a Unix
//! datagram socket in `NOTIFY_SOCKET` that records each sender's pid
//! (SCM_CREDENTIALS). The root parent is the main process: `READY=1` with
//! `MAINPID=<parent>` once the nobody child accepts on every listener,
//! `RELOADING=1` then `READY=1` around an upgrade, `STOPPING=1` on SIGTERM;
//! the child never sees `NOTIFY_SOCKET` and never sends anything. Started
//! unprivileged (immediate mode), the service is the main process and
//! notifies itself.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{service_dir, Gateway, SOON};
use lifecycle_tests::{
    gateway_command, http_get, loud, require_root, Datagram, GatewayConfig, NotifySocket,
};
use nix::sys::signal::Signal;

/// The next datagram that has `line` as one of its lines.
fn wait_for(systemd: &NotifySocket, line: &str, seen: &mut Vec<Datagram>) -> Datagram {
    loop {
        let d = systemd
            .recv_datagram(SOON)
            .unwrap()
            .unwrap_or_else(|| panic!("no {line:?}; so far: {seen:?}"));
        seen.push(d.clone());
        if d.has_line(line) {
            return d;
        }
    }
}

/// `GET /readyz` status, or 0 when the request fails.
fn readyz(gw: &Gateway) -> u16 {
    http_get(gw.http, "/readyz", SOON).map_or(0, |(status, _)| status)
}

/// A temporary directory for user nobody: the spool, the config (with
/// `head` on top) and the notify socket; returns the config path.
fn setup(head: &str) -> (tempfile::TempDir, std::path::PathBuf, NotifySocket) {
    let dir = service_dir();
    let systemd = NotifySocket::bind_at(&dir.path().join("notify")).unwrap();
    let path = GatewayConfig::new(dir.path().join("spool"))
        .head(head)
        .write(dir.path())
        .unwrap();
    (dir, path, systemd)
}

/// Starts `cmd` (a [`gateway_command`] in `dir`) with `systemd` as its
/// `NOTIFY_SOCKET`, waits for `READY=1` (recording what came in `seen`)
/// and then asks `/readyz`: the gateway, the `READY=1` datagram and the
/// status. At `READY=1` every listener already serves, so the status is
/// 200 unless readiness comes too early.
fn start_until_ready(
    mut cmd: Command,
    dir: tempfile::TempDir,
    systemd: &NotifySocket,
    seen: &mut Vec<Datagram>,
) -> (Gateway, Datagram, u16) {
    cmd.env("NOTIFY_SOCKET", systemd.path());
    let mut gw = Gateway::spawn_command(dir, &mut cmd);
    let ready = wait_for(systemd, "READY=1", seen);
    // The log comes through slog-async and a pipe: READY=1 can overtake
    // the lines that name the bound addresses, so wait for the last one.
    gw.wait_log(SOON, |l| {
        l.contains(r#""listener":"http""#)
            && (l.contains(r#""msg":"listener bound""#) || l.contains(r#""msg":"listener taken""#))
    })
    .unwrap_or_else(|| panic!("no http listener in the log\n{}", gw.log_text()));
    gw.learn_addresses();
    let status = readyz(&gw);
    (gw, ready, status)
}

#[test]
fn the_root_parent_is_the_main_pid_and_notifies_ready_reloading_stopping() {
    if !require_root("the privileged start with NOTIFY_SOCKET") {
        return;
    }
    let (dir, path, systemd) = setup(r#"user = "nobody""#);
    let mut seen = Vec::new();
    let cmd = gateway_command(common::BIN.as_ref(), &path, dir.path());
    let (mut gw, ready, status) = start_until_ready(cmd, dir, &systemd, &mut seen);
    let parent = gw.pid();
    // At READY=1 the child already serves every listener: SMTP greets.
    let mut smtp = TcpStream::connect(gw.smtp).unwrap();
    smtp.set_read_timeout(Some(SOON)).unwrap();
    let mut greeting = [0u8; 3];
    smtp.read_exact(&mut greeting).unwrap();
    let child = gw.service_pid();
    loud(&format!(
        "notify: READY=1 from pid {} (parent {parent}, child {child}): {:?}; /readyz then {status}",
        ready.pid, ready.text
    ));
    assert_eq!(status, 200, "/readyz at READY=1\n{}", gw.log_text());
    assert_eq!(&greeting, b"220");
    assert!(ready.has_line(&format!("MAINPID={parent}")), "{ready:?}");
    assert_eq!(ready.pid, parent, "READY=1 must come from the main process");
    // The child never had NOTIFY_SOCKET.
    let environ = std::fs::read(format!("/proc/{child}/environ")).unwrap();
    assert!(
        !environ
            .split(|b| *b == 0)
            .any(|v| v.starts_with(b"NOTIFY_SOCKET=")),
        "the child inherited NOTIFY_SOCKET"
    );

    // An upgrade: RELOADING=1, then READY=1 once generation 2 serves.
    gw.signal(Signal::SIGHUP);
    wait_for(&systemd, "RELOADING=1", &mut seen);
    let again = wait_for(&systemd, "READY=1", &mut seen);
    assert!(
        again.text.contains("STATUS=serving generation 2"),
        "{again:?}"
    );

    gw.signal(Signal::SIGTERM);
    let stopping = wait_for(&systemd, "STOPPING=1", &mut seen);
    let status = gw.wait_exit(SOON).expect("still running");
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
    // Whatever arrived after STOPPING=1 too.
    while let Some(d) = systemd.recv_datagram(Duration::from_millis(200)).unwrap() {
        seen.push(d);
    }
    loud(&format!("notify: datagrams {seen:?}"));
    assert_eq!(stopping.pid, parent);
    assert!(
        seen.iter().all(|d| d.pid == parent),
        "only the parent may notify: {seen:?}"
    );
}

#[test]
fn an_unprivileged_service_is_its_own_main_process() {
    if !require_root("starting the gateway as user nobody") {
        return;
    }
    let (dir, path, systemd) = setup("");
    // nobody's copy of the binary, in the 0755 test directory: the target
    // directory may be out of its reach (a checkout under a 0700 home).
    let bin = dir.path().join("lifecycle-gateway");
    lifecycle_tests::install_program(common::BIN.as_ref(), &bin).unwrap();
    let mut cmd = gateway_command(&bin, &path, dir.path());
    lifecycle_tests::ServiceUser::nobody()
        .unwrap()
        .drop_privileges(&mut cmd);
    let mut seen = Vec::new();
    let (mut gw, ready, status) = start_until_ready(cmd, dir, &systemd, &mut seen);
    let pid = gw.pid();
    loud(&format!(
        "notify (immediate mode): READY=1 from pid {} (service {pid}): {:?}; /readyz then {status}",
        ready.pid, ready.text
    ));
    assert!(
        gw.wait_log(SOON, |l| l.contains(r#""mode":"immediate""#))
            .is_some(),
        "{}",
        gw.log_text()
    );
    assert_eq!(status, 200, "/readyz at READY=1\n{}", gw.log_text());
    assert_eq!(ready.pid, pid);
    gw.signal(Signal::SIGTERM);
    let stopping = wait_for(&systemd, "STOPPING=1", &mut seen);
    assert_eq!(stopping.pid, pid);
    let status = gw.wait_exit(SOON).expect("still running");
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
}

/// The WATCHDOG=1 datagrams that arrive within `window`, with the time
/// each came, measured from the call.
fn watchdog_pings(systemd: &NotifySocket, window: Duration) -> Vec<(Duration, u32)> {
    let start = std::time::Instant::now();
    let mut pings = Vec::new();
    while let Some(left) = window.checked_sub(start.elapsed()) {
        match systemd.recv_datagram(left).unwrap() {
            Some(d) if d.has_line("WATCHDOG=1") => pings.push((start.elapsed(), d.pid)),
            Some(_) => {}
            None => break,
        }
    }
    pings
}

#[test]
fn the_root_parent_pings_the_watchdog_only_while_its_child_answers() {
    if !require_root("the privileged start's watchdog with NOTIFY_SOCKET") {
        return;
    }
    let dir = service_dir();
    let systemd = NotifySocket::bind_at(&dir.path().join("notify")).unwrap();
    let control = dir.path().join("control.sock");
    let path = GatewayConfig::new(dir.path().join("spool"))
        .head(&format!("user = \"nobody\"\ncontrol_socket = {control:?}"))
        .write(dir.path())
        .unwrap();
    let mut cmd = gateway_command(common::BIN.as_ref(), &path, dir.path());
    // 400 ms: a ping every 200 ms, each after the child answered.
    cmd.env("WATCHDOG_USEC", "400000");
    let mut seen = Vec::new();
    let (mut gw, _, _) = start_until_ready(cmd, dir, &systemd, &mut seen);
    let (parent, child) = (gw.pid(), gw.service_pid());

    let serving = watchdog_pings(&systemd, Duration::from_secs(1));
    assert!(
        serving.len() >= 3 && serving.iter().all(|&(_, pid)| pid == parent),
        "pings from the parent while the child serves: {serving:?}\n{}",
        gw.log_text()
    );
    assert!(gw
        .wait_log(SOON, |l| l.contains("watchdog: generation 1 answers"))
        .is_some());

    // A hung child: after the probe in flight, no more pings.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child as i32), Signal::SIGSTOP).unwrap();
    let hung = watchdog_pings(&systemd, Duration::from_millis(2500));
    let late: Vec<_> = hung
        .iter()
        .filter(|(at, _)| *at > Duration::from_millis(300))
        .collect();
    let withheld = gw.wait_log(SOON, |l| {
        l.contains("watchdog: ping for generation 1 withheld")
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child as i32), Signal::SIGCONT).unwrap();
    assert!(
        late.is_empty(),
        "pings while the child was stopped: {hung:?}"
    );
    let withheld = withheld.expect("no log line on the withheld pings");
    loud(&format!(
        "watchdog: {} pings in 1 s while the child served, {} in 2.5 s while it was \
         stopped; {withheld}",
        serving.len(),
        hung.len()
    ));

    // Resumed: pings again.
    let resumed = watchdog_pings(&systemd, Duration::from_millis(1500));
    assert!(
        !resumed.is_empty(),
        "no ping after SIGCONT\n{}",
        gw.log_text()
    );
    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(SOON).expect("still running");
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
}
