//! [`NotifySender`]: a small synchronous sender of `sd_notify(3)`
//! datagrams, usable with or without actix.
//!
//! Why not the `sd-notify` crate's `notify()` function: it reads
//! `NOTIFY_SOCKET` from the process environment on every call (so the
//! address cannot be injected, and two instances in one test process would
//! share it), it can only unset the variable through `std::env::remove_var`
//! (unsound once other threads run), and it treats `@name` as a file name
//! instead of the abstract socket systemd means by it. The transport is a
//! dozen lines of std (`UnixDatagram::send_to_addr` plus
//! `SocketAddr::from_abstract_name`); the message vocabulary
//! ([`NotifyState`], its `Display` as `READY=1`, `MAINPID=…`) is the crate's.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::Duration;

use sd_notify::NotifyState;

use super::error::NotifyError;

/// How long a send may wait for room in the service manager's queue unless
/// [`NotifySender::send_timeout`] says otherwise.
const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_millis(250);

/// Sends notifications to the service manager's socket (`NOTIFY_SOCKET`),
/// synchronously, one datagram per call, as `sd_notify(3)` does.
///
/// The address is parsed once: an absolute path, or `@name` for a socket
/// in the abstract namespace (systemd uses both). Each send waits at most
/// the send timeout (default 250 ms) for room in the receiver's queue, so a
/// stuck service manager cannot block the caller for long.
///
/// This is what a process without an actor system calls, e.g. the
/// privileged parent that is the unit's main process:
///
/// ```
/// use actix_lifecycle::NotifySender;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("notify");
/// # let systemd = std::os::unix::net::UnixDatagram::bind(&path)?;
/// // In a service: `NotifySender::from_env()?` (None without NOTIFY_SOCKET).
/// let sender = NotifySender::new(&path)?;
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
pub struct NotifySender {
    socket: UnixDatagram,
    target: SocketAddr,
    display: String,
}

impl NotifySender {
    /// The sender for `NOTIFY_SOCKET` of this process, read now; `None`
    /// when the variable is unset or empty (not started by a service
    /// manager that wants notifications).
    ///
    /// The variable is left in place: remove it from the environment of
    /// child processes you spawn (`Command::env_remove`) so they do not
    /// notify in your name.
    pub fn from_env() -> Result<Option<NotifySender>, NotifyError> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(value) if !value.is_empty() => NotifySender::new(value).map(Some),
            _ => Ok(None),
        }
    }

    /// A sender for the socket `value` names, in `NOTIFY_SOCKET` syntax:
    /// an absolute path, or `@name` for the abstract namespace.
    pub fn new(value: impl AsRef<OsStr>) -> Result<NotifySender, NotifyError> {
        let value = value.as_ref();
        let display = value.to_string_lossy().into_owned();
        let target = parse_target(value).map_err(|reason| NotifyError::SocketValue {
            value: display.clone(),
            reason,
        })?;
        let socket =
            UnixDatagram::unbound().map_err(|source| NotifyError::CreateSocket { source })?;
        let sender = NotifySender {
            socket,
            target,
            display,
        };
        sender.apply_timeout(DEFAULT_SEND_TIMEOUT)?;
        Ok(sender)
    }

    /// How long a send may wait when the service manager's queue is full
    /// before it fails. Default 250 ms; zero never waits.
    pub fn send_timeout(self, timeout: Duration) -> Result<NotifySender, NotifyError> {
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
        self.send_raw(&msg)
    }

    fn send_raw(&self, msg: &str) -> Result<(), NotifyError> {
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
        let text = text.replace(['\n', '\r'], " ");
        self.notify(&[NotifyState::Status(&text)])
    }

    /// `WATCHDOG=1`: the service is alive.
    pub fn watchdog(&self) -> Result<(), NotifyError> {
        self.notify(&[NotifyState::Watchdog])
    }
}

/// `NOTIFY_SOCKET` syntax → a socket address, or why not.
fn parse_target(value: &OsStr) -> Result<SocketAddr, String> {
    let bytes = value.as_bytes();
    match bytes.first() {
        None => Err("it is empty".to_owned()),
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

/// Lossy text of an optional variable value, for error messages.
pub(crate) fn lossy(value: &OsString) -> String {
    value.to_string_lossy().into_owned()
}
