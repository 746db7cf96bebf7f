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

use std::io::{IoSliceMut, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Gateway, SOON};
use lifecycle_tests::{loud, require_root};
use nix::sys::signal::Signal;
use nix::sys::socket::{
    bind, recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};

/// One datagram: its text and the sender's pid.
#[derive(Debug, Clone)]
struct Datagram {
    text: String,
    pid: i32,
}

/// A notify socket at `path`; every datagram goes to the returned channel.
fn notify_socket(path: &std::path::Path) -> mpsc::Receiver<Datagram> {
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::PassCred, &true).unwrap();
    bind(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
    // The sender (the parent, as root) may write; the nobody child must not
    // be kept out by permissions alone, so the socket is open to all: the
    // credentials tell who sent what.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || loop {
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
        let Ok(msg) = recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        ) else {
            return;
        };
        let mut pid = 0;
        for cmsg in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmCredentials(creds) = cmsg {
                pid = creds.pid();
            }
        }
        let len = msg.bytes;
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        if tx.send(Datagram { text, pid }).is_err() {
            return;
        }
    });
    rx
}

/// The next datagram that has `line` as one of its lines.
fn wait_for(rx: &mpsc::Receiver<Datagram>, line: &str, seen: &mut Vec<Datagram>) -> Datagram {
    loop {
        let d = rx
            .recv_timeout(SOON)
            .unwrap_or_else(|_| panic!("no {line:?}; so far: {seen:?}"));
        seen.push(d.clone());
        if d.text.lines().any(|l| l == line) {
            return d;
        }
    }
}

/// `GET /readyz` status, or 0 when the request fails.
fn readyz(gw: &Gateway) -> u16 {
    let Ok(mut s) = TcpStream::connect(gw.http) else {
        return 0;
    };
    s.set_read_timeout(Some(SOON)).unwrap();
    if s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").is_err() {
        return 0;
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// A temporary directory for user nobody: the spool, the config (with
/// `head` on top) and the notify socket; returns the config path.
fn setup(
    head: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    mpsc::Receiver<Datagram>,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    nix::unistd::chown(&spool, Some(65534.into()), Some(65534.into())).unwrap();
    let socket_path = dir.path().join("notify");
    let rx = notify_socket(&socket_path);
    let config = format!(
        r#"{head}
spool_dir = "{spool}"
[log]
format = "json"
[smtp]
hostname = "gw.test"
[[listener]]
name = "smtp"
protocol = "smtp"
address = "127.0.0.1:0"
[[listener]]
name = "imap"
protocol = "imap"
address = "127.0.0.1:0"
[[listener]]
name = "http"
protocol = "http"
address = "127.0.0.1:0"
"#,
        spool = spool.display()
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, path, rx, socket_path)
}

#[test]
fn the_root_parent_is_the_main_pid_and_notifies_ready_reloading_stopping() {
    if !require_root("the privileged start with NOTIFY_SOCKET") {
        return;
    }
    let (dir, path, rx, socket_path) = setup(r#"user = "nobody""#);
    let mut cmd = Command::new(common::BIN);
    cmd.arg("--config")
        .arg(&path)
        .env("NOTIFY_SOCKET", &socket_path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut gw = Gateway::spawn_command(dir, &mut cmd);
    let parent = i32::try_from(gw.pid()).unwrap();

    let mut seen = Vec::new();
    let ready = wait_for(&rx, "READY=1", &mut seen);
    // At READY=1 the child already serves every listener: /readyz says 200
    // (it turns ready only after every listener accepts), SMTP greets.
    gw.learn_addresses();
    let status = readyz(&gw);
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
    assert!(
        ready.text.lines().any(|l| l == format!("MAINPID={parent}")),
        "{ready:?}"
    );
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
    wait_for(&rx, "RELOADING=1", &mut seen);
    let again = wait_for(&rx, "READY=1", &mut seen);
    assert!(
        again.text.contains("STATUS=serving generation 2"),
        "{again:?}"
    );

    gw.signal(Signal::SIGTERM);
    let stopping = wait_for(&rx, "STOPPING=1", &mut seen);
    let status = gw.wait_exit(SOON).expect("still running");
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
    // Whatever arrived after STOPPING=1 too.
    while let Ok(d) = rx.recv_timeout(Duration::from_millis(200)) {
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
    let (dir, path, rx, socket_path) = setup("");
    // nobody's copy of the binary, in the 0755 test directory: the target
    // directory may be out of its reach (a checkout under a 0700 home).
    let bin = dir.path().join("lifecycle-gateway");
    lifecycle_tests::install_program(common::BIN.as_ref(), &bin).unwrap();
    let mut cmd = Command::new(&bin);
    lifecycle_tests::ServiceUser::nobody()
        .unwrap()
        .drop_privileges(&mut cmd);
    cmd.arg("--config")
        .arg(&path)
        .env("NOTIFY_SOCKET", &socket_path)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut gw = Gateway::spawn_command(dir, &mut cmd);
    let pid = i32::try_from(gw.pid()).unwrap();
    let mut seen = Vec::new();
    let ready = wait_for(&rx, "READY=1", &mut seen);
    gw.learn_addresses();
    let status = readyz(&gw);
    loud(&format!(
        "notify (immediate mode): READY=1 from pid {} (service {pid}): {:?}; /readyz then {status}",
        ready.pid, ready.text
    ));
    assert!(
        gw.logs()
            .iter()
            .any(|l| l.contains(r#""mode":"immediate""#)),
        "{}",
        gw.log_text()
    );
    assert_eq!(status, 200, "/readyz at READY=1\n{}", gw.log_text());
    assert_eq!(ready.pid, pid);
    gw.signal(Signal::SIGTERM);
    let stopping = wait_for(&rx, "STOPPING=1", &mut seen);
    assert_eq!(stopping.pid, pid);
    let status = gw.wait_exit(SOON).expect("still running");
    assert_eq!(status.code(), Some(0), "{}", gw.log_text());
}
