//! `sd_notify` from the privileged parent (or a process handing over to its
//! successor): a small Unix datagram sender bound to the `NOTIFY_SOCKET`
//! read once at start-up.
//!
//! Why not the `sd-notify` crate: its `notify()` reads `NOTIFY_SOCKET` from
//! the process environment at every call, so the address cannot be captured
//! once and injected (a test would have to change the process environment,
//! which is unsound once threads run), and version 0.4 does not support
//! systemd's abstract socket names (`@...`). The protocol is one datagram of
//! `KEY=VALUE` lines; this sender is a few lines of std.

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;

use crate::environment::Environment;
use crate::error::{Error, Result};

/// The variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The watchdog interval systemd sets (microseconds).
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The process the watchdog interval is meant for.
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// Sends state changes to systemd's notification socket.
///
/// ```
/// use std::os::unix::net::UnixDatagram;
/// use lifecycle_handoff::Notifier;
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("notify");
/// let systemd = UnixDatagram::bind(&path).unwrap();
/// let notifier = Notifier::new(&path);
/// notifier.send(&["READY=1".to_string(), "MAINPID=42".to_string()]).unwrap();
/// let mut buf = [0u8; 64];
/// let n = systemd.recv(&mut buf).unwrap();
/// assert_eq!(&buf[..n], b"READY=1\nMAINPID=42\n");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifier {
    target: OsString,
}

impl Notifier {
    /// A notifier for the socket at `path` (an absolute path, or `@name` for
    /// an abstract socket).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Notifier {
            target: path.into().into_os_string(),
        }
    }

    /// The notifier for `NOTIFY_SOCKET` in `env`; `None` when it is unset
    /// (not under systemd `Type=notify`: nothing is ever sent). Read it at
    /// start-up, before threads exist.
    pub fn from_env(env: &impl Environment) -> Result<Option<Notifier>> {
        let Some(value) = env.var(NOTIFY_SOCKET) else {
            return Ok(None);
        };
        let bytes = value.as_bytes();
        let problem = if bytes.is_empty() {
            Some("it is empty")
        } else if bytes.contains(&0) {
            Some("it contains a NUL byte")
        } else if bytes[0] != b'/' && bytes[0] != b'@' {
            Some("it is neither an absolute path nor an abstract name (@...)")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(Error::BadNotifySocket {
                value: value.to_string_lossy().into_owned(),
                problem: problem.to_owned(),
            });
        }
        Ok(Some(Notifier { target: value }))
    }

    /// The socket address as given.
    pub fn target(&self) -> &std::ffi::OsStr {
        &self.target
    }

    /// Sends `lines` (`KEY=VALUE`, no newline inside) as one datagram.
    pub fn send(&self, lines: &[String]) -> io::Result<()> {
        let mut message = Vec::new();
        for line in lines {
            message.extend_from_slice(line.as_bytes());
            message.push(b'\n');
        }
        let socket = UnixDatagram::unbound()?;
        let bytes = self.target.as_bytes();
        let address = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(PathBuf::from(&self.target))?,
        };
        let sent = socket.send_to_addr(&message, &address)?;
        if sent != message.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short write to NOTIFY_SOCKET",
            ));
        }
        Ok(())
    }
}

/// `MONOTONIC_USEC=<now>`, which systemd wants with `RELOADING=1`.
pub(crate) fn monotonic_usec() -> String {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `now`, which lives on
    // this stack frame; CLOCK_MONOTONIC is always available on Linux.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let usec = if result == 0 {
        i128::from(now.tv_sec) * 1_000_000 + i128::from(now.tv_nsec) / 1_000
    } else {
        0
    };
    format!("MONOTONIC_USEC={usec}")
}
