//! `sd_notify(3)` without a library call that reads the environment: the
//! one synchronous sender of the workspace ([`Notifier`]), the variables a
//! service manager passes about notifications ([`NotifyEnv`]), and why a
//! notification could not be used ([`NotifyError`]).
//!
//! The privileged parent ([`UpgradeSupervisor`](crate::UpgradeSupervisor)),
//! a process handing over to its successor
//! ([`SuccessorHandoff`](crate::SuccessorHandoff)) and actix-lifecycle's
//! `SystemdNotifier` actor all send through a [`Notifier`].
//!
//! Why not the `sd-notify` crate's `notify()` function: it reads
//! `NOTIFY_SOCKET` from the process environment on every call (so the
//! address cannot be captured once and injected, and two instances in one
//! test process would share it), it can only unset the variable through
//! `std::env::remove_var` (unsound once other threads run), and version 0.4
//! treats `@name` as a file name instead of the abstract socket systemd
//! means by it. The transport is a dozen lines of std
//! (`UnixDatagram::send_to_addr` plus `SocketAddr::from_abstract_name`); the
//! message vocabulary ([`NotifyState`], its `Display` as `READY=1`,
//! `MAINPID=…`) is the crate's.

mod env;
mod error;

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::Duration;

pub use env::NotifyEnv;
pub use error::NotifyError;
pub use sd_notify::NotifyState;

/// The variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The watchdog interval systemd sets (microseconds).
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The process the watchdog interval is meant for.
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// How long a send may wait for room in the service manager's queue unless
/// [`Notifier::send_timeout`] says otherwise.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_millis(250);

/// Sends notifications to the service manager's socket (`NOTIFY_SOCKET`),
/// synchronously, one datagram per call, as `sd_notify(3)` does.
///
/// The address is parsed once, when the sender is made: an absolute path,
/// or `@name` for a socket in the abstract namespace (systemd uses both).
/// The datagram socket is made once too, so a send needs no new descriptor.
///
/// **A send never blocks for long.** It waits at most the send timeout
/// ([`DEFAULT_SEND_TIMEOUT`], 250 ms) for room in the receiver's queue and
/// then fails with [`NotifyError::Send`]: a stuck service manager must not
/// stall the caller (a supervision loop that must forward signals, or an
/// actor's arbiter, where waiting sends with a short watchdog period would
/// occupy it completely). An actor sets [`send_timeout`](Self::send_timeout)
/// to zero: a full queue fails at once ([`NotifyError::is_queue_full`])
/// and the actor decides what to retry.
///
/// This is what a process without an actor system calls, e.g. the
/// privileged parent that is the unit's main process:
///
/// ```
/// use lifecycle_handoff::Notifier;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("notify");
/// # let systemd = std::os::unix::net::UnixDatagram::bind(&path)?;
/// // In a service: `Notifier::from_env()?` (None without NOTIFY_SOCKET).
/// let sender = Notifier::new(&path)?;
/// // The child said it is ready: the parent is ready, and stays main.
/// sender.ready_as_main(std::process::id())?;
/// # let mut buf = [0u8; 256];
/// # let n = systemd.recv(&mut buf)?;
/// # assert_eq!(&buf[..n], format!("READY=1\nMAINPID={}\n", std::process::id()).as_bytes());
/// sender.status("1 connection")?;
/// sender.stopping()?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: SocketAddr,
    display: String,
}

impl Notifier {
    /// The sender for `NOTIFY_SOCKET` of this process, read now; `None`
    /// when the variable is unset or empty (not started by a service
    /// manager that wants notifications). See [`NotifyEnv`] to read the
    /// variables from elsewhere (a test, a map).
    ///
    /// The variable is left in place: remove it from the environment of
    /// child processes you spawn (`Command::env_remove`) so they do not
    /// notify in your name.
    pub fn from_env() -> Result<Option<Notifier>, NotifyError> {
        NotifyEnv::from_process().sender()
    }

    /// A sender for the socket `value` names, in `NOTIFY_SOCKET` syntax:
    /// an absolute path, or `@name` for the abstract namespace.
    pub fn new(value: impl AsRef<OsStr>) -> Result<Notifier, NotifyError> {
        let value = value.as_ref();
        let display = value.to_string_lossy().into_owned();
        let target = parse_target(value).map_err(|reason| NotifyError::SocketValue {
            value: display.clone(),
            reason,
        })?;
        let socket =
            UnixDatagram::unbound().map_err(|source| NotifyError::CreateSocket { source })?;
        let sender = Notifier {
            socket,
            target,
            display,
        };
        sender.apply_timeout(DEFAULT_SEND_TIMEOUT)?;
        Ok(sender)
    }

    /// How long a send may wait when the service manager's queue is full
    /// before it fails. Default [`DEFAULT_SEND_TIMEOUT`] (250 ms); zero
    /// never waits.
    pub fn send_timeout(self, timeout: Duration) -> Result<Notifier, NotifyError> {
        self.apply_timeout(timeout)?;
        Ok(self)
    }

    fn apply_timeout(&self, timeout: Duration) -> Result<(), NotifyError> {
        let res = if timeout.is_zero() {
            self.socket.set_nonblocking(true)
        } else {
            self.socket
                .set_nonblocking(false)
                .and_then(|()| self.socket.set_write_timeout(Some(timeout)))
        };
        res.map_err(|source| NotifyError::CreateSocket { source })
    }

    /// The socket address as given (`/run/systemd/notify`, `@name`).
    pub fn socket(&self) -> &str {
        &self.display
    }

    /// Sends `states` in one datagram, one `NAME=value` line each (e.g.
    /// `READY=1`, `MAINPID=42`). A state whose text holds a newline is
    /// refused: it would be read as two assignments.
    pub fn notify(&self, states: &[NotifyState<'_>]) -> Result<(), NotifyError> {
        let mut msg = String::new();
        for state in states {
            let line = state.to_string();
            if line.contains('\n') {
                return Err(NotifyError::Newline { state: line });
            }
            msg.push_str(&line);
            msg.push('\n');
        }
        let sent = self.socket.send_to_addr(msg.as_bytes(), &self.target);
        let err = match sent {
            Ok(n) if n == msg.len() => return Ok(()),
            Ok(_) => io::Error::new(io::ErrorKind::WriteZero, "the datagram was cut short"),
            Err(e) => e,
        };
        Err(NotifyError::Send {
            socket: self.display.clone(),
            what: msg.lines().next().unwrap_or_default().to_owned(),
            source: err,
        })
    }

    /// `READY=1`: start-up is finished.
    pub fn ready(&self) -> Result<(), NotifyError> {
        self.notify(&[NotifyState::Ready])
    }

    /// `READY=1` and `MAINPID=<pid>` in one datagram: what a privileged
    /// parent sends with its own pid once its child is ready, so the
    /// service manager keeps the parent as the main process.
    pub fn ready_as_main(&self, pid: u32) -> Result<(), NotifyError> {
        self.notify(&[NotifyState::Ready, NotifyState::MainPid(pid)])
    }

    /// `MAINPID=<pid>`: the unit's main process is now `pid` (e.g. the
    /// successor after an upgrade). Accepted only from the current main
    /// process under `NotifyAccess=main`.
    pub fn main_pid(&self, pid: u32) -> Result<(), NotifyError> {
        self.notify(&[NotifyState::MainPid(pid)])
    }

    /// `STOPPING=1`: the service is shutting down.
    pub fn stopping(&self) -> Result<(), NotifyError> {
        self.notify(&[NotifyState::Stopping])
    }

    /// `STATUS=<text>`, the line `systemctl status` shows. Line breaks in
    /// `text` become spaces.
    pub fn status(&self, text: &str) -> Result<(), NotifyError> {
        let text = one_line(text);
        self.notify(&[NotifyState::Status(&text)])
    }

    /// `WATCHDOG=1`: the service is alive.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.notify(&[NotifyState::Watchdog])
    }
}

/// `text` with its line breaks turned into spaces, fit for `STATUS=`.
pub(crate) fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// `MONOTONIC_USEC=<now>`, which systemd wants with `RELOADING=1`
/// (`MONOTONIC_USEC=0` in the impossible case that the clock fails).
pub(crate) fn monotonic_now() -> NotifyState<'static> {
    NotifyState::monotonic_usec_now().unwrap_or(NotifyState::MonotonicUsec(0))
}

/// `NOTIFY_SOCKET` syntax → a socket address, or why not.
fn parse_target(value: &OsStr) -> Result<SocketAddr, String> {
    let bytes = value.as_bytes();
    match bytes.first() {
        None => Err("it is empty".to_owned()),
        Some(_) if bytes.contains(&0) => Err("it contains a NUL byte".to_owned()),
        Some(b'@') => abstract_addr(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(Path::new(value))
            .map_err(|e| format!("not a Unix socket path ({e}; at most 107 bytes)")),
        Some(_) if bytes.starts_with(b"vsock") => {
            Err("AF_VSOCK notification sockets are not supported".to_owned())
        }
        Some(_) => Err("it is neither an absolute path nor an @abstract name".to_owned()),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> Result<SocketAddr, String> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    if name.is_empty() {
        return Err("the abstract name after @ is empty".to_owned());
    }
    SocketAddr::from_abstract_name(name)
        .map_err(|e| format!("not an abstract socket name ({e}; at most 107 bytes)"))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &[u8]) -> Result<SocketAddr, String> {
    Err("abstract socket names exist only on Linux".to_owned())
}
