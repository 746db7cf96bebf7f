//! Upgrades without a privileged parent (as root, to start the gateway as
//! user nobody; skipped with a printed reason otherwise): SIGHUP (or
//! SIGUSR2) makes the serving process hand its listeners and freshly opened
//! TLS files to a successor of itself, drain and exit, and the successor
//! reports itself with `MAINPID=` once its predecessor exited; in the immediate mode under load, and socket-activated
//! by `systemd-socket-activate`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::upgrading::{
    as_nobody, count, gone, load, replace_with_script, upgrade_pid, LoadStats, Reaper, Setup,
    NOBODY,
};
use common::{occurrences, s_client, sample, served_pem, SOON};
use lifecycle_tests::{loud, require_root, require_tool};
use nix::sys::signal::Signal;

/// The next notify datagram with `line` among its lines, and the pid of
/// its sender (the socket must have `SO_PASSCRED`, see [`pass_credentials`]).
fn notified_by(socket: &std::os::unix::net::UnixDatagram, line: &str) -> (String, i32) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials};
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; 4096];
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(UnixCredentials);
        let msg = recvmsg::<UnixAddr>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap_or_else(|e| panic!("no {line:?}: {e}"));
        let pid = msg
            .cmsgs()
            .unwrap()
            .find_map(|c| match c {
                ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
                _ => None,
            })
            .expect("SO_PASSCRED credentials");
        let n = msg.bytes;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.lines().any(|l| l == line) {
            return (text, pid);
        }
    }
}

/// Makes the kernel attach the sender's credentials to every datagram.
fn pass_credentials(socket: &std::os::unix::net::UnixDatagram) {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::PassCred, &true).unwrap();
}

/// The next notify datagram with `line` among its lines.
fn notified(socket: &std::os::unix::net::UnixDatagram, line: &str) -> String {
    let mut buf = [0u8; 4096];
    loop {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {line:?}: {e}"));
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.lines().any(|l| l == line) {
            return text;
        }
    }
}

#[test]
fn without_a_privileged_parent_sighup_hands_over_to_a_successor() {
    if !require_root("starting the gateway as user nobody") || !require_tool("openssl") {
        return;
    }
    let (setup, pem) = Setup::new();
    for path in [&setup.cert, &setup.key] {
        nix::unistd::chown(path, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    }
    let notify_path = setup.dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(SOON)).unwrap();
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut gw = setup.launch(
        "",
        |cmd| {
            as_nobody(cmd);
            cmd.env("NOTIFY_SOCKET", &notify_path);
        },
        "ready",
    );
    notified(&notify, "READY=1");
    let first = i32::try_from(gw.pid()).unwrap();
    let mut reaper = Reaper(Vec::new());
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(LoadStats::default());
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..4)
        .map(|id| {
            let (stop, stats, accepted) = (stop.clone(), stats.clone(), accepted.clone());
            let addr = gw.smtp;
            std::thread::spawn(move || load(addr, id, stop, stats, accepted))
        })
        .collect();

    // Two hand-overs under load: 1 → 2 → 3, each reported with MAINPID=.
    let mut serving = first;
    let mut pids = vec![first];
    for round in 1..=2u64 {
        while stats.accepted.load(Ordering::Relaxed) < round * 300 {
            std::thread::sleep(Duration::from_millis(10));
        }
        // What `systemctl reload` sends, then the other upgrade signal.
        let signal = if round == 1 {
            Signal::SIGHUP
        } else {
            Signal::SIGUSR2
        };
        let line = upgrade_pid(&gw, serving, signal);
        assert!(
            line.contains("upgrade succeeded"),
            "{line}\n{}",
            gw.log_text()
        );
        let next = i32::try_from(common::number(&line, "child").unwrap()).unwrap();
        reaper.0.push(next);
        let text = notified(&notify, &format!("MAINPID={next}"));
        loud(&format!(
            "hand-over {round}: pid {serving} -> {next}; notified {text:?}"
        ));
        pids.push(next);
        serving = next;
    }
    // The first process (the test's child) drained and exited 0; the second
    // is gone too.
    let status = gw.wait_exit(SOON).expect("generation 1 still running");
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
    let deadline = Instant::now() + SOON;
    while !gone(pids[1]) {
        assert!(Instant::now() < deadline, "generation 2 still running");
        std::thread::sleep(Duration::from_millis(20));
    }
    while stats.accepted.load(Ordering::Relaxed) < 900 {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let (refused, reset, other) = (
        stats.refused.load(Ordering::Relaxed),
        stats.reset.load(Ordering::Relaxed),
        stats.other.load(Ordering::Relaxed),
    );
    let stored: Vec<Vec<u8>> = gw
        .messages()
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let missing = accepted
        .iter()
        .filter(|t| {
            stored
                .iter()
                .filter(|b| occurrences(b, t.as_bytes()) > 0)
                .count()
                != 1
        })
        .count();
    loud(&format!(
        "successor hand-over: pids {pids:?}; {} messages acknowledged, {} sessions drained (421, retried); \
         refused {refused}, reset {reset}, other {other}; {} files in the spool, {missing} acknowledged not stored exactly once",
        accepted.len(),
        stats.drained.load(Ordering::Relaxed),
        stored.len(),
    ));
    assert_eq!((refused, reset, other), (0, 0, 0));
    assert_eq!(missing, 0);
    assert_eq!(stored.len(), accepted.len());

    // The TLS files were passed on: generation 3 serves the certificate.
    let t = s_client(gw.addr("smtps"), None, "QUIT\n");
    assert_eq!(served_pem(&t).as_deref(), Some(pem.as_str()), "{t}");
    let metrics = gw.metrics();
    assert_eq!(
        sample(&metrics, "lifecycle_generation", &[]),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "lifecycle_upgrades_total", &[("result", "ok")]),
        Some(2.0),
        "{metrics}"
    );

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(serving), Signal::SIGTERM).unwrap();
    notified(&notify, "STOPPING=1");
    let deadline = Instant::now() + SOON;
    while !gone(serving) {
        assert!(Instant::now() < deadline, "generation 3 still running");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every generation exited: the log ends once the reader thread read
    // their last lines.
    assert!(gw.wait_log_end(SOON), "the log did not end");
    assert_eq!(
        count(&gw, "draining for an upgrade"),
        2,
        "{}",
        gw.log_text()
    );
}

#[test]
fn a_socket_activated_gateway_hands_over_on_sighup() {
    if !require_root("starting the gateway as user nobody")
        || !require_tool("systemd-socket-activate")
    {
        return;
    }
    use std::io::{BufRead, BufReader};
    use std::net::TcpStream;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    nix::unistd::chown(&spool, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "spool_dir = \"{}\"\n[log]\nformat = \"json\"\n[smtp]\nhostname = \"gw.test\"\n\
             [[listener]]\nname = \"smtp\"\nprotocol = \"smtp\"\naddress = \"127.0.0.1:{port}\"\n",
            spool.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(SOON)).unwrap();
    pass_credentials(&notify);
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777)).unwrap();
    // nobody's copy of the binary, in the 0755 test directory: the target
    // directory may be out of its reach (a checkout under a 0700 home).
    let bin = dir.path().join("lifecycle-gateway");
    lifecycle_tests::install_program(common::BIN.as_ref(), &bin).unwrap();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["-l", &format!("127.0.0.1:{port}"), "--fdname=smtp", "-E"])
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .arg("--")
        .arg(&bin)
        .arg("--config")
        .arg(&config)
        .current_dir(dir.path());
    as_nobody(&mut cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut gw = common::Gateway::spawn_command(dir, &mut cmd);
    // systemd-socket-activate says so on stderr once its socket listens.
    gw.wait_log(SOON, |l| l.contains("Listening on"))
        .unwrap_or_else(|| panic!("systemd-socket-activate did not listen:\n{}", gw.log_text()));
    let greet = |what: &str| {
        // The first connection also makes systemd-socket-activate exec the
        // gateway.
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(SOON)).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert!(line.starts_with("220 "), "{what}: {line:?}");
    };
    greet("the first, activating connection");
    gw.wait_log(SOON, |l| l.contains(r#""msg":"ready""#))
        .unwrap_or_else(|| panic!("not ready:\n{}", gw.log_text()));
    notified(&notify, "READY=1");
    assert!(
        gw.log_text().contains(r#""mode":"systemd""#),
        "{}",
        gw.log_text()
    );

    let first = i32::try_from(gw.pid()).unwrap();
    let line = upgrade_pid(&gw, first, Signal::SIGHUP);
    assert!(
        line.contains("upgrade succeeded"),
        "{line}\n{}",
        gw.log_text()
    );
    let next = i32::try_from(common::number(&line, "child").unwrap()).unwrap();
    let _reaper = Reaper(vec![next]);
    // Issue 17: MAINPID= comes from the successor itself, once its
    // predecessor has exited (then it is the service manager's child); sent
    // by the predecessor, systemd would supervise it as "not our child" and
    // SIGKILL it on stop.
    let (text, sender) = notified_by(&notify, &format!("MAINPID={next}"));
    assert_eq!(
        sender, next,
        "MAINPID= must come from the successor: {text:?}"
    );
    assert!(
        gone(first),
        "MAINPID= came before the predecessor {first} exited"
    );
    loud(&format!(
        "socket-activated hand-over: pid {first} -> {next}; notified {text:?}"
    ));
    let status = gw
        .wait_exit(SOON)
        .expect("the activated process still runs");
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
    greet("after the hand-over");
    // The successor's own line: nothing of its log was waited for yet.
    let started = format!(r#""pid":{next}"#);
    gw.wait_log(SOON, |l| {
        l.contains(r#""msg":"starting""#)
            && l.contains(&started)
            && l.contains(r#""mode":"inherited""#)
    })
    .unwrap_or_else(|| panic!("no inherited start of {next}:\n{}", gw.log_text()));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(next), Signal::SIGTERM).unwrap();
    notified(&notify, "STOPPING=1");
    let deadline = Instant::now() + SOON;
    while !gone(next) {
        assert!(Instant::now() < deadline, "the successor still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A stop (SIGTERM) during a hand-over stays a stop: the successor that is
/// still starting is killed, the process drains and exits 0 within its
/// graces, and nothing is left running or holding the ports.
#[test]
fn sigterm_during_a_hand_over_cancels_it() {
    if !require_root("starting the gateway as user nobody") {
        return;
    }
    let (setup, _pem) = Setup::new();
    for path in [&setup.cert, &setup.key] {
        nix::unistd::chown(path, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    }
    let bin = setup.bin.clone();
    // Written by the successor, which runs as nobody.
    let run_dir = setup.dir.path().join("run");
    std::fs::create_dir(&run_dir).unwrap();
    nix::unistd::chown(&run_dir, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    let pid_file = run_dir.join("successor.pid");
    let mut gw = setup.launch(
        "",
        |cmd| {
            as_nobody(cmd);
        },
        "ready",
    );
    // The binary on disk now never becomes ready.
    replace_with_script(
        &bin,
        &format!("echo $$ > '{}'\nexec sleep 600", pid_file.display()),
    );
    let mut reaper = Reaper(Vec::new());
    gw.signal(Signal::SIGHUP);
    gw.wait_log(SOON, |l| l.contains(r#""msg":"upgrade started""#))
        .unwrap_or_else(|| panic!("no upgrade started:\n{}", gw.log_text()));
    let deadline = Instant::now() + SOON;
    let successor = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the successor never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    reaper.0.push(successor);
    let signalled = Instant::now();
    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit(SOON).expect("the gateway did not exit");
    let took = signalled.elapsed();
    // The reader thread may still hold the last lines after the exit.
    assert!(gw.wait_log_end(SOON), "the log did not end");
    let log = gw.log_text();
    assert_eq!(status.code(), Some(0), "{log}");
    // Drain 2 s + abort 1 s, plus slack: not the 30 s ready timeout.
    assert!(took < Duration::from_secs(10), "exit took {took:?}:\n{log}");
    assert!(
        log.contains(r#""msg":"upgrade cancelled by a stop""#),
        "{log}"
    );
    assert!(!log.contains("upgrade succeeded"), "{log}");
    assert!(gone(successor), "the cancelled successor still runs");
    assert!(
        std::net::TcpStream::connect(gw.smtp).is_err(),
        "something still listens on the SMTP port"
    );
    loud(&format!(
        "SIGTERM during a hand-over: exit 0 after {took:?}, successor {successor} killed"
    ));
}
