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

#[path = "../common/mod.rs"]
mod common;

mod activation;
mod as_root;
mod notifications;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::{field, Client, BIN, SOON};
use lifecycle_tests::{
    ChildGuard, GatewayConfig, Installed, LogFollower, NotifyRecorder, NotifySocket, ServiceUser,
};
use nix::sys::signal::Signal;

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

/// The stand-in for systemd's notification socket: `notify.sock` in `dir`
/// (which the service user can reach), recorded by a thread.
fn notify_socket(dir: &Path) -> NotifyRecorder {
    NotifySocket::bind_at(&dir.join("notify.sock"))
        .unwrap()
        .record()
}

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
    // No per-address limit: the STATUS= burst holds about a hundred
    // connections from 127.0.0.1 (admission has tests of its own).
    let config = GatewayConfig::new(dir.join("spool"))
        .head(extra)
        .drain_grace("3s")
        .abort_grace("1s")
        .limits("max_per_address = 0")
        .no_listeners();
    listeners
        .iter()
        .fold(config, |c, (name, protocol, address)| {
            c.listener(name, protocol, address, "")
        })
        .write(dir)
        .unwrap()
}

/// A running process whose stderr (the gateway's JSON log) is collected.
struct Running {
    child: ChildGuard,
    log: LogFollower,
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
        let log = LogFollower::new(child.child_mut().stderr.take().unwrap());
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
        self.log.lines()
    }

    fn log_text(&self) -> String {
        self.log.text()
    }

    fn wait_log(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        self.log.wait(timeout, pred)
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
        self.log.wait_end(SOON);
        status
    }
}

/// Connects to an SMTP listener and reads its greeting.
fn greeted(addr: SocketAddr) -> Client {
    let mut c = Client::connect(addr);
    c.expect("220");
    c
}

/// Connects to `addr` until systemd-socket-activate listens there (at most
/// [`SOON`]): the first connection starts the gateway.
fn first_connection(addr: &str) {
    let deadline = std::time::Instant::now() + SOON;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "systemd-socket-activate never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that process `pid` runs as nobody (65534) with no
/// supplementary group, no effective capability and `no_new_privs`.
fn assert_nobody_without_privileges(pid: u32) {
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
}
