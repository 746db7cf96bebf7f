//! The gateway under a (stand-in) service manager, for real: a Unix
//! datagram socket plays systemd's `NOTIFY_SOCKET` (with `SO_PASSCRED`, so
//! every datagram names the process that sent it), and
//! `systemd-socket-activate` plays socket activation. The gateway runs
//! unprivileged: as `nobody` when the tests run as root.
//!
//! * immediate mode: `READY=1` only once every listener accepts, `STATUS=`
//!   with live connection counts and at most about once a second,
//!   `STOPPING=1` on SIGTERM, exit 0;
//! * `WATCHDOG_USEC`: `WATCHDOG=1` pings;
//! * privileged start (root): the serving child sends nothing;
//! * socket activation, named (`--fdname=smtp`) and unnamed: swaks
//!   delivers through the activated socket, the log says mode `systemd`, a
//!   socket no listener claims is closed; a listener without a socket is a
//!   clear error and a non-zero exit.

mod common;

use std::io::{BufRead, BufReader, IoSliceMut};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::{field, Client, BIN, SOON};
use lifecycle_tests::{
    free_port, loud, require_root, require_tool, ChildGuard, Installed, ServiceUser,
};
use nix::sys::signal::Signal;
use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials,
};

/// Variables that would change how the gateway starts; never inherited
/// from the test's own environment.
const SCRUBBED: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "LIFECYCLE_SOCKETS",
    "LIFECYCLE_FILES",
    "LIFECYCLE_FDS",
    "LIFECYCLE_PARENT_PID",
];

// ---------------------------------------------------------------------------
// The stand-in for systemd's notification socket.

/// One datagram: its text, the sender's pid, when it arrived.
#[derive(Debug, Clone)]
struct Datagram {
    text: String,
    pid: u32,
    at: SystemTime,
}

/// What the receiving thread does the moment `READY=1` arrives, before it
/// reads another datagram.
type Probe = Box<dyn Fn() -> Result<(), String> + Send>;

#[derive(Default)]
struct Inbox {
    got: Mutex<Vec<Datagram>>,
    grew: Condvar,
    /// The outcome of the probe run when `READY=1` arrived.
    probed: Mutex<Option<Result<(), String>>>,
}

/// A bound `SOCK_DGRAM` socket in a temporary directory, read by a thread.
struct NotifySocket {
    path: PathBuf,
    inbox: Arc<Inbox>,
    stop: Arc<AtomicBool>,
}

impl NotifySocket {
    /// Binds `notify.sock` in `dir`, writable by everyone (the gateway may
    /// run as another user).
    fn bind(dir: &Path) -> NotifySocket {
        NotifySocket::bind_with_probe(dir, None)
    }

    /// [`bind`](Self::bind), running `probe` as soon as a `READY=1`
    /// arrives.
    fn bind_with_probe(dir: &Path, probe: Option<Probe>) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        setsockopt(&socket, sockopt::PassCred, &true).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let inbox = Arc::new(Inbox::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped) = (inbox.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !stopped.load(Ordering::SeqCst) {
                let mut cmsg = nix::cmsg_space!(UnixCredentials);
                let mut iov = [IoSliceMut::new(&mut buf)];
                let (len, pid) = match recvmsg::<UnixAddr>(
                    socket.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                ) {
                    Ok(msg) => {
                        let pid = msg
                            .cmsgs()
                            .unwrap()
                            .find_map(|c| match c {
                                ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
                                _ => None,
                            })
                            .expect("SO_PASSCRED gives every datagram its sender");
                        (msg.bytes, pid)
                    }
                    Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                    Err(e) => panic!("notify socket: {e}"),
                };
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                if let Some(probe) = probe.as_ref().filter(|_| text.contains("READY=1")) {
                    let outcome = probe();
                    sink.probed.lock().unwrap().get_or_insert(outcome);
                }
                sink.got.lock().unwrap().push(Datagram {
                    text,
                    pid: u32::try_from(pid).unwrap(),
                    at: SystemTime::now(),
                });
                sink.grew.notify_all();
            }
        });
        NotifySocket { path, inbox, stop }
    }

    fn all(&self) -> Vec<Datagram> {
        self.inbox.got.lock().unwrap().clone()
    }

    /// The first datagram (from the start) matching `pred`, waiting up to
    /// `timeout` for it.
    fn wait(&self, timeout: Duration, pred: impl Fn(&Datagram) -> bool) -> Option<Datagram> {
        let deadline = Instant::now() + timeout;
        let mut got = self.inbox.got.lock().unwrap();
        loop {
            if let Some(d) = got.iter().find(|d| pred(d)) {
                return Some(d.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            got = self.inbox.grew.wait_timeout(got, deadline - now).unwrap().0;
        }
    }

    /// The datagrams whose text starts with `prefix`.
    fn with_prefix(&self, prefix: &str) -> Vec<Datagram> {
        self.all()
            .into_iter()
            .filter(|d| d.text.starts_with(prefix))
            .collect()
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn lines(d: &Datagram) -> Vec<&str> {
    d.text.lines().collect()
}

// ---------------------------------------------------------------------------
// The gateway, unprivileged.

/// `nobody` when the tests run as root (the gateway must not be root
/// here: as root it would start its privileged parent); `None` otherwise.
fn service_user() -> Option<ServiceUser> {
    ServiceUser::when_root().unwrap()
}

/// A temporary directory the service user may use.
fn service_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    if let Some(user) = service_user() {
        user.chown(dir.path()).unwrap();
    }
    dir
}

/// The gateway binary as the service user may run it (a copy when the
/// tests run as root: the target directory may be out of its reach), and
/// the copy to keep.
fn service_bin() -> (PathBuf, Option<Installed>) {
    match service_user() {
        Some(user) => {
            let installed = user.install(BIN.as_ref()).unwrap();
            (installed.path().to_owned(), Some(installed))
        }
        None => (PathBuf::from(BIN), None),
    }
}

/// Runs `command` as the service user when the tests run as root.
fn as_service_user(command: &mut Command) {
    if let Some(user) = service_user() {
        user.drop_privileges(command);
    }
}

/// A gateway config with JSON logs: `listeners` as (name, protocol,
/// address), the spool in `dir`, `extra` lines at the top.
fn config(dir: &Path, extra: &str, listeners: &[(&str, &str, &str)]) -> PathBuf {
    let mut text = format!(
        "{extra}\nspool_dir = \"{}\"\n[shutdown]\ndrain_grace = \"3s\"\nabort_grace = \"1s\"\n\
         [log]\nformat = \"json\"\nlevel = \"info\"\n[smtp]\nhostname = \"gw.test\"\n\
         [limits]\nmax_per_address = 0\n",
        dir.join("spool").display()
    );
    // No per-address limit: the STATUS= burst holds about a hundred
    // connections from 127.0.0.1 (admission has tests of its own).
    for (name, protocol, address) in listeners {
        text.push_str(&format!(
            "[[listener]]\nname = \"{name}\"\nprotocol = \"{protocol}\"\naddress = \"{address}\"\n"
        ));
    }
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

#[derive(Default)]
struct LogLines {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
    /// Set when stderr reached its end (every writer exited).
    ended: AtomicBool,
}

/// A running process whose stderr (the gateway's JSON log) is collected.
struct Running {
    child: ChildGuard,
    log: Arc<LogLines>,
    /// The service user's copy of the binary, kept while it runs.
    _installed: Option<Installed>,
}

impl Running {
    /// Spawns `command` with stderr piped and a scrubbed environment plus
    /// `env`.
    fn spawn(command: &mut Command, env: &[(&str, &str)]) -> Running {
        for var in SCRUBBED {
            command.env_remove(var);
        }
        command
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn(command).unwrap();
        let stderr = child.child_mut().stderr.take().unwrap();
        let log = Arc::new(LogLines::default());
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lines.lock().unwrap().push(line);
                sink.grew.notify_all();
            }
            let _guard = sink.lines.lock().unwrap();
            sink.ended.store(true, Ordering::SeqCst);
            sink.grew.notify_all();
        });
        Running {
            child,
            log,
            _installed: None,
        }
    }

    /// The gateway binary with `--config config`, in `dir`, unprivileged.
    fn gateway(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Running {
        let (bin, installed) = service_bin();
        let mut command = Command::new(bin);
        command.arg("--config").arg(config).current_dir(dir);
        as_service_user(&mut command);
        Running {
            _installed: installed,
            ..Running::spawn(&mut command, env)
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn logs(&self) -> Vec<String> {
        self.log.lines.lock().unwrap().clone()
    }

    fn log_text(&self) -> String {
        self.logs().join("\n")
    }

    fn wait_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self.log.grew.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    fn wait_msg(&self, msg: &str) -> String {
        let needle = format!(r#""msg":"{msg}""#);
        self.wait_log(SOON, |l| l.contains(&needle))
            .unwrap_or_else(|| panic!("no {msg:?} in the log:\n{}", self.log_text()))
    }

    /// The addresses of the `listener bound`/`listener taken` lines.
    fn listener(&self, name: &str) -> SocketAddr {
        self.logs()
            .iter()
            .filter(|l| {
                l.contains(r#""msg":"listener bound""#) || l.contains(r#""msg":"listener taken""#)
            })
            .find(|l| field(l, "listener").as_deref() == Some(name))
            .and_then(|l| field(l, "address")?.parse().ok())
            .unwrap_or_else(|| panic!("no address of {name} in the log:\n{}", self.log_text()))
    }

    fn signal(&self, sig: Signal) {
        self.child.signal(sig).unwrap();
    }

    /// Waits for the process to exit and for its log to end (the reader
    /// thread may still hold the last lines when the exit is seen).
    fn wait_exit(&mut self) -> ExitStatus {
        let status = self
            .child
            .wait_timeout(SOON)
            .unwrap()
            .unwrap_or_else(|| panic!("still running; log:\n{}", self.log_text()));
        let deadline = Instant::now() + SOON;
        let mut lines = self.log.lines.lock().unwrap();
        while !self.log.ended.load(Ordering::SeqCst) && Instant::now() < deadline {
            lines = self
                .log
                .grew
                .wait_timeout(lines, deadline - Instant::now())
                .unwrap()
                .0;
        }
        status
    }
}

/// Connects to an SMTP listener and reads its greeting.
fn greeted(addr: SocketAddr) -> Client {
    let mut c = Client::connect(addr);
    c.expect("220");
    c
}

// ---------------------------------------------------------------------------
// Notifications, immediate mode.

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
    let systemd = NotifySocket::bind_with_probe(dir.path(), Some(probe));
    let cfg = config(
        dir.path(),
        "",
        &[
            ("smtp", "smtp", &smtp),
            ("imap", "imap", &imap),
            ("http", "http", &http),
        ],
    );
    let notify_socket = systemd.path.to_str().unwrap().to_owned();
    let mut gw = Running::gateway(dir.path(), &cfg, &[("NOTIFY_SOCKET", &notify_socket)]);

    let ready = systemd
        .wait(SOON, |d| lines(d).contains(&"READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; log:\n{}", gw.log_text()));
    // Every listener answered right when READY=1 arrived.
    let probed = systemd.inbox.probed.lock().unwrap().clone();
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
        .wait(SOON, |d| lines(d).contains(&"STOPPING=1"))
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
    let systemd = NotifySocket::bind(dir.path());
    let cfg = config(dir.path(), "", &[("smtp", "smtp", "127.0.0.1:0")]);
    let notify_socket = systemd.path.to_str().unwrap().to_owned();
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
        .wait(SOON, |d| lines(d).contains(&"READY=1"))
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
    let systemd = NotifySocket::bind(dir.path());
    // The root parent creates the spool for `nobody`.
    let cfg = config(
        dir.path(),
        "user = \"nobody\"",
        &[("smtp", "smtp", "127.0.0.1:0")],
    );
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let notify_socket = systemd.path.to_str().unwrap().to_owned();
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

// ---------------------------------------------------------------------------
// Socket activation.

/// `systemd-socket-activate` with `args` before `--`, starting the gateway
/// with `config`, run as the service user; `NOTIFY_SOCKET` passed on with
/// `-E` when given.
fn activated(dir: &Path, config: &Path, args: &[String], notify: Option<&Path>) -> Running {
    let mut command = Command::new("systemd-socket-activate");
    command.args(args);
    if let Some(path) = notify {
        command
            .arg("-E")
            .arg(format!("NOTIFY_SOCKET={}", path.display()));
    }
    let (bin, installed) = service_bin();
    command
        .arg("--")
        .arg(bin)
        .arg("--config")
        .arg(config)
        .current_dir(dir);
    as_service_user(&mut command);
    Running {
        _installed: installed,
        ..Running::spawn(&mut command, &[])
    }
}

/// Delivers one message with swaks through `port`; panics with swaks's
/// output if it fails.
fn swaks(port: u16) {
    let out = Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &port.to_string()])
        .args(["--from", "sender@example.org", "--to", "rcpt@example.net"])
        .args(["--body", "through an activated socket", "--timeout", "20"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "swaks failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn spooled(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("spool"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                .count()
        })
        .unwrap_or(0)
}

fn activation_tools() -> bool {
    // Both checked (and reported) even when the first is missing.
    let activate = require_tool("systemd-socket-activate");
    let swaks = require_tool("swaks");
    activate && swaks
}

#[test]
fn socket_activation_with_fdname_delivers_and_notifies() {
    if !activation_tools() {
        return;
    }
    let dir = service_dir();
    let systemd = NotifySocket::bind(dir.path());
    let (port, stray) = (free_port().unwrap(), free_port().unwrap());
    let smtp = format!("127.0.0.1:{port}");
    let cfg = config(dir.path(), "", &[("smtp", "smtp", &smtp)]);
    // A second activated socket that no listener claims.
    let args = [
        "-l".to_owned(),
        smtp.clone(),
        "-l".to_owned(),
        format!("127.0.0.1:{stray}"),
        "--fdname=smtp:stray".to_owned(),
    ];
    let mut gw = activated(dir.path(), &cfg, &args, Some(&systemd.path));
    // systemd-socket-activate starts the gateway on the first connection:
    // swaks's, which the gateway then serves.
    swaks(port);
    assert_eq!(spooled(dir.path()), 1, "{}", gw.log_text());
    let started = gw.wait_msg("starting");
    assert_eq!(
        field(&started, "mode").as_deref(),
        Some("systemd"),
        "{started}"
    );
    let taken = gw.wait_msg("listener taken");
    assert_eq!(field(&taken, "listener").as_deref(), Some("smtp"));
    assert_eq!(field(&taken, "address").as_deref(), Some(smtp.as_str()));
    // The unclaimed socket is logged and closed.
    let closed = gw.wait_msg("closing listener nobody took");
    assert_eq!(
        field(&closed, "listener").as_deref(),
        Some("stray"),
        "{closed}"
    );
    let refused = TcpStream::connect(("127.0.0.1", stray));
    assert!(refused.is_err(), "the stray socket still accepts");
    // systemd-socket-activate execs the gateway: same pid, which notifies.
    let ready = systemd
        .wait(SOON, |d| lines(d).contains(&"READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; log:\n{}", gw.log_text()));
    assert_eq!(ready.pid, gw.pid());
    gw.signal(Signal::SIGTERM);
    systemd
        .wait(SOON, |d| lines(d).contains(&"STOPPING=1"))
        .unwrap_or_else(|| panic!("no STOPPING=1; log:\n{}", gw.log_text()));
    let status = gw.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", gw.log_text());
}

#[test]
fn an_unnamed_activated_socket_is_found_by_its_address() {
    if !activation_tools() {
        return;
    }
    let dir = service_dir();
    let port = free_port().unwrap();
    let smtp = format!("127.0.0.1:{port}");
    let cfg = config(dir.path(), "", &[("smtp", "smtp", &smtp)]);
    // No --fdname: LISTEN_FDNAMES is not set at all.
    let mut gw = activated(dir.path(), &cfg, &["-l".to_owned(), smtp.clone()], None);
    swaks(port);
    assert_eq!(spooled(dir.path()), 1, "{}", gw.log_text());
    let started = gw.wait_msg("starting");
    assert_eq!(field(&started, "mode").as_deref(), Some("systemd"));
    // Taken under the config's name, so the listener actor found it.
    let taken = gw.wait_msg("listener taken");
    assert_eq!(
        field(&taken, "listener").as_deref(),
        Some("smtp"),
        "{taken}"
    );
    assert_eq!(field(&taken, "address").as_deref(), Some(smtp.as_str()));
    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", gw.log_text());
}

#[test]
fn a_listener_without_an_activated_socket_is_a_clear_error() {
    if !require_tool("systemd-socket-activate") {
        return;
    }
    let dir = service_dir();
    let (port, imap_port) = (free_port().unwrap(), free_port().unwrap());
    let smtp = format!("127.0.0.1:{port}");
    let imap = format!("127.0.0.1:{imap_port}");
    let cfg = config(
        dir.path(),
        "",
        &[("smtp", "smtp", &smtp), ("imap", "imap", &imap)],
    );
    let args = ["-l".to_owned(), smtp.clone(), "--fdname=smtp".to_owned()];
    let mut gw = activated(dir.path(), &cfg, &args, None);
    // The first connection starts the gateway, which refuses to run.
    let deadline = Instant::now() + SOON;
    while TcpStream::connect(&smtp).is_err() {
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = gw.wait_exit();
    assert!(!status.success(), "{status:?}\n{}", gw.log_text());
    let text = gw.log_text();
    let message = text
        .lines()
        .find(|l| l.starts_with("lifecycle-gateway: "))
        .unwrap_or_else(|| panic!("no error line:\n{text}"));
    loud(&format!("missing activated socket: {message}"));
    for needle in [
        "listener \"imap\"",
        &imap,
        "FileDescriptorName=imap",
        "--fdname=imap",
    ] {
        assert!(message.contains(needle), "{needle:?} missing: {message}");
    }
}

// ---------------------------------------------------------------------------
// Socket activation started as root.

/// `systemd-socket-activate -l address --fdname=smtp -- gateway --config
/// config`, as root (a unit without `User=`).
fn activated_as_root(dir: &Path, config: &Path, address: &str) -> Running {
    let mut command = Command::new("systemd-socket-activate");
    command
        .args(["-l", address, "--fdname=smtp", "--"])
        .arg(BIN)
        .arg("--config")
        .arg(config)
        .current_dir(dir);
    Running::spawn(&mut command, &[])
}

#[test]
fn socket_activation_as_root_drops_to_the_user_in_place() {
    if !require_root("socket activation started as root") || !activation_tools() {
        return;
    }
    // A directory `nobody` can traverse; the spool does not exist yet: the
    // gateway creates it for `nobody` before it drops.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let port = free_port().unwrap();
    let smtp = format!("127.0.0.1:{port}");
    let cfg = config(dir.path(), "user = \"nobody\"", &[("smtp", "smtp", &smtp)]);
    let mut gw = activated_as_root(dir.path(), &cfg, &smtp);
    swaks(port);
    assert_eq!(spooled(dir.path()), 1, "{}", gw.log_text());
    let started = gw.wait_msg("starting");
    assert_eq!(field(&started, "mode").as_deref(), Some("systemd"));
    let dropped = gw.wait_msg("privileges dropped in place");
    loud(&format!("socket activation as root: {dropped}"));
    assert_eq!(field(&dropped, "user").as_deref(), Some("nobody"));
    assert_eq!(field(&dropped, "mode").as_deref(), Some("systemd"));
    for key in ["uid", "gid"] {
        assert_eq!(common::number(&dropped, key), Some(65534), "{dropped}");
    }
    gw.wait_msg("spool directory created for the service user");
    // The serving process (systemd-socket-activate execs it: same pid) has
    // nothing of root left.
    let proc = lifecycle_tests::ProcStats::new(gw.pid());
    for key in ["Uid", "Gid"] {
        assert_eq!(
            proc.status_text(key).unwrap(),
            "65534\t65534\t65534\t65534",
            "{key}"
        );
    }
    assert_eq!(proc.status_text("Groups").unwrap(), "");
    assert_eq!(proc.status_text("NoNewPrivs").unwrap(), "1");
    assert_eq!(proc.status_text("CapEff").unwrap(), "0000000000000000");
    assert_eq!(proc.status_text("CapPrm").unwrap(), "0000000000000000");
    let message = std::fs::read_dir(dir.path().join("spool"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .unwrap();
    let owner = std::os::unix::fs::MetadataExt::uid(&message.metadata().unwrap());
    assert_eq!(owner, 65534, "spooled by the service user");
    gw.signal(Signal::SIGTERM);
    let status = gw.wait_exit();
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", gw.log_text());
}

#[test]
fn socket_activation_as_root_without_a_user_names_the_fix_for_this_mode() {
    if !require_root("socket activation started as root")
        || !require_tool("systemd-socket-activate")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let smtp = format!("127.0.0.1:{port}");
    let cfg = config(dir.path(), "", &[("smtp", "smtp", &smtp)]);
    let mut gw = activated_as_root(dir.path(), &cfg, &smtp);
    // The first connection starts the gateway, which refuses to run.
    let deadline = Instant::now() + SOON;
    while TcpStream::connect(&smtp).is_err() {
        assert!(
            Instant::now() < deadline,
            "systemd-socket-activate never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = gw.wait_exit();
    assert_eq!(status.code(), Some(2), "{status:?}\n{}", gw.log_text());
    let text = gw.log_text();
    let message = text
        .lines()
        .find(|l| l.starts_with("lifecycle-gateway: "))
        .unwrap_or_else(|| panic!("no error line:\n{text}"));
    loud(&format!("socket activation as root, no user: {message}"));
    for needle in ["socket activation", "no `user`", "`User=` in the unit"] {
        assert!(message.contains(needle), "{needle:?} missing: {message}");
    }
    assert!(!text.contains(r#""msg":"ready""#), "{text}");
}

/// Kills and reaps the child when the test ends, however it ends.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn inherited_sockets_from_a_parent_that_kept_root_drop_to_the_user_in_place() {
    if !require_root("a gateway started as root with inherited sockets") {
        return;
    }
    use lifecycle_handoff::{bind_listener, ChildSpawner, Inventory, ListenerSpec, PassedListener};
    // This test plays a parent that binds, passes the socket and does not
    // drop (as a foreign supervisor might): the gateway starts as root in
    // inherited mode with `user = "nobody"`.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = ListenerSpec::tcp("smtp", "127.0.0.1:0".parse().unwrap());
    let (fd, bound) = bind_listener(&spec).unwrap();
    let smtp = bound.to_string();
    let inventory = Inventory {
        listeners: vec![PassedListener {
            spec: spec.with_address(bound),
            fd,
        }],
        files: vec![],
    };
    let cfg = config(dir.path(), "user = \"nobody\"", &[("smtp", "smtp", &smtp)]);
    let log = dir.path().join("gateway.log");
    // `sh` execs the gateway: same pid, same parent (this test), the passed
    // socket at fd 3, the log in a file.
    let child = ChildSpawner::new()
        .unwrap()
        .program("/bin/sh")
        .args([
            "-c".as_ref(),
            r#"exec "$0" --config "$1" 2>"$2""#.as_ref(),
            BIN.as_ref(),
            cfg.as_os_str(),
            log.as_os_str(),
        ])
        .spawn(&inventory)
        .unwrap();
    drop(inventory);
    let mut child = Reaped(child);
    let pid = child.0.id();
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + SOON;
    while !text().contains(r#""msg":"ready""#) {
        assert!(Instant::now() < deadline, "not ready:\n{}", text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let all = text();
    let dropped = all
        .lines()
        .find(|l| l.contains(r#""msg":"privileges dropped in place""#))
        .unwrap_or_else(|| panic!("no drop logged:\n{all}"));
    assert_eq!(field(dropped, "mode").as_deref(), Some("inherited"));
    let proc = lifecycle_tests::ProcStats::new(pid);
    for key in ["Uid", "Gid"] {
        assert_eq!(
            proc.status_text(key).unwrap(),
            "65534\t65534\t65534\t65534",
            "{key}"
        );
    }
    assert_eq!(proc.status_text("Groups").unwrap(), "");
    assert_eq!(proc.status_text("NoNewPrivs").unwrap(), "1");
    assert_eq!(proc.status_text("CapEff").unwrap(), "0000000000000000");
    let mut c = greeted(smtp.parse().unwrap());
    c.send(
        "EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n",
    );
    for code in ["250", "250", "250", "354"] {
        c.expect(code);
    }
    c.send("Subject: t\r\n\r\ninherited\r\n.\r\n");
    c.expect("250");
    assert_eq!(spooled(dir.path()), 1);
    c.send("QUIT\r\n");
    c.expect("221");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + SOON;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running:\n{}", text());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{}", text());
}
