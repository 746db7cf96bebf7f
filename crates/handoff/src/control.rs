//! The operator's control socket: a Unix stream socket on which a client
//! (`lifecycle-gateway ctl`) sends **one JSON request on one line** and gets
//! **one JSON reply on one line**; the server then closes the connection
//! (except after a `stop`, where the connection stays open until the process
//! exits, so that the end of file says "stopped").
//!
//! Requests: `{"version":1,"command":"status"}`, `"upgrade"` (with
//! `"wait":true` the reply comes once the upgrade is settled), `"stop"`,
//! `"connections"`. Every reply has `"version"` and `"ok"`; a failed one has
//! `"error"` with a message naming the culprit.
//!
//! The server side here is built for a synchronous loop that must never
//! stall ([`UpgradeSupervisor`](crate::UpgradeSupervisor)'s): every socket is
//! non-blocking, a request line is at most [`MAX_REQUEST_LINE`] bytes, a
//! client that sends nothing for [`CONTROL_IDLE_TIMEOUT`] is dropped, at most
//! [`MAX_CONTROL_CLIENTS`] are served at once, and a reply that does not fit
//! in the socket buffer at once closes the connection. Access is checked
//! with `SO_PEERCRED` ([`ControlAccess`]).

pub(crate) mod server;

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The protocol version this crate speaks (the `version` of every request
/// and reply).
pub const CONTROL_PROTOCOL_VERSION: u32 = 1;

/// The longest request line accepted, newline included; a longer one gets
/// an error reply and the connection is closed.
pub const MAX_REQUEST_LINE: usize = 64 * 1024;

/// How long a client may take to send its request line.
pub const CONTROL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many clients are served at once; one more is answered "busy" and
/// closed.
pub const MAX_CONTROL_CLIENTS: usize = 32;

/// One request line as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// The protocol version ([`CONTROL_PROTOCOL_VERSION`]).
    pub version: u32,
    /// `status`, `upgrade`, `stop` or `connections`.
    pub command: String,
    /// For `upgrade`: reply once the upgrade is settled (default false:
    /// reply once it started).
    #[serde(default)]
    pub wait: bool,
}

/// A valid request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlCommand {
    /// The service's state.
    Status,
    /// Start an upgrade; with `wait`, answer with its result.
    Upgrade {
        /// Answer once the upgrade is settled.
        wait: bool,
    },
    /// Stop gracefully (as SIGTERM).
    Stop,
    /// The open connections.
    Connections,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The line is not a JSON request object.
    #[error(
        "bad request ({detail}); send one JSON object per line, such as \
         {{\"version\":1,\"command\":\"status\"}}"
    )]
    BadRequest {
        /// What the JSON parser said.
        detail: String,
    },
    /// Another protocol version.
    #[error(
        "unsupported protocol version {got}; this service speaks version {CONTROL_PROTOCOL_VERSION} \
         (use the lifecycle-gateway ctl of the same release)"
    )]
    Version {
        /// The version asked for.
        got: u32,
    },
    /// A command nobody knows.
    #[error("unknown command {name:?}; known commands: status, upgrade, stop, connections")]
    UnknownCommand {
        /// The command sent.
        name: String,
    },
    /// The line is longer than [`MAX_REQUEST_LINE`].
    #[error(
        "request line longer than {MAX_REQUEST_LINE} bytes; send one short JSON object per line"
    )]
    TooLong,
    /// The peer may not use the socket.
    #[error(
        "permission denied: uid {uid} is neither root nor a member of the control group; \
         run as root or add the user to `control_group`"
    )]
    Denied {
        /// The peer's uid.
        uid: u32,
    },
    /// Too many clients at once.
    #[error("busy: {MAX_CONTROL_CLIENTS} control clients are connected; try again")]
    Busy,
    /// No request within [`CONTROL_IDLE_TIMEOUT`].
    #[error("no request within {CONTROL_IDLE_TIMEOUT:?}; connection closed")]
    Timeout,
}

impl ControlCommand {
    /// Parses one request line (without or with its newline).
    ///
    /// ```
    /// use lifecycle_handoff::{ControlCommand, ControlError};
    ///
    /// let cmd = ControlCommand::parse_line(br#"{"version":1,"command":"upgrade","wait":true}"#);
    /// assert_eq!(cmd, Ok(ControlCommand::Upgrade { wait: true }));
    /// assert!(matches!(ControlCommand::parse_line(b"hello"), Err(ControlError::BadRequest { .. })));
    /// ```
    pub fn parse_line(line: &[u8]) -> std::result::Result<ControlCommand, ControlError> {
        let request: ControlRequest =
            serde_json::from_slice(line.trim_ascii()).map_err(|e| ControlError::BadRequest {
                detail: e.to_string(),
            })?;
        if request.version != CONTROL_PROTOCOL_VERSION {
            return Err(ControlError::Version {
                got: request.version,
            });
        }
        match request.command.as_str() {
            "status" => Ok(ControlCommand::Status),
            "upgrade" => Ok(ControlCommand::Upgrade { wait: request.wait }),
            "stop" => Ok(ControlCommand::Stop),
            "connections" => Ok(ControlCommand::Connections),
            _ => Err(ControlError::UnknownCommand {
                name: request.command,
            }),
        }
    }

    /// The command as an operator types it (`status`, `upgrade --wait`,
    /// ...), for logs.
    pub fn name(self) -> &'static str {
        match self {
            ControlCommand::Status => "status",
            ControlCommand::Upgrade { wait: true } => "upgrade --wait",
            ControlCommand::Upgrade { wait: false } => "upgrade",
            ControlCommand::Stop => "stop",
            ControlCommand::Connections => "connections",
        }
    }

    /// The request line for this command, newline included.
    pub fn to_line(self) -> String {
        let (command, wait) = match self {
            ControlCommand::Status => ("status", false),
            ControlCommand::Upgrade { wait } => ("upgrade", wait),
            ControlCommand::Stop => ("stop", false),
            ControlCommand::Connections => ("connections", false),
        };
        let request = ControlRequest {
            version: CONTROL_PROTOCOL_VERSION,
            command: command.to_owned(),
            wait,
        };
        let mut line = serde_json::to_string(&request).unwrap_or_default();
        line.push('\n');
        line
    }
}

/// The reply for a refused request: `{"version":1,"ok":false,"error":...}`.
pub fn error_reply(message: &str) -> serde_json::Value {
    serde_json::json!({"version": CONTROL_PROTOCOL_VERSION, "ok": false, "error": message})
}

/// The name under which a serving process hands its control socket on to
/// a successor (an entry of the hand-off protocol, as the listeners are):
/// the successor takes it with
/// [`Handoff::listen`](crate::Handoff::listen) and serves the same socket,
/// so the path is never unlinked nor re-bound.
pub const CONTROL_LISTENER_NAME: &str = "lifecycle-control";

/// The reply to `upgrade --wait` once the upgrade from generation `from`
/// to `to` is settled: `failure` `None` when generation `to` (process
/// `pid`) serves and `from` drains, else why it failed (`from` serves on).
/// The same shape whoever owns upgrades (the privileged parent or the
/// serving process).
///
/// ```
/// use lifecycle_handoff::upgrade_reply;
///
/// let ok = upgrade_reply(1, 2, Some(42), None);
/// assert_eq!((ok["ok"].as_bool(), ok["generation"].as_u64()), (Some(true), Some(2)));
/// let failed = upgrade_reply(1, 2, None, Some("the new child exited with code 3"));
/// assert_eq!(failed["generation"].as_u64(), Some(1));
/// assert!(failed["error"].as_str().unwrap().contains("generation 1 keeps serving"));
/// ```
pub fn upgrade_reply(
    from: u64,
    to: u64,
    pid: Option<u32>,
    failure: Option<&str>,
) -> serde_json::Value {
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    match failure {
        None => serde_json::json!({"version": CONTROL_PROTOCOL_VERSION, "ok": true,
            "result": "ok", "from": from, "to": to, "pid": pid, "generation": to, "at": at}),
        Some(failure) => serde_json::json!({"version": CONTROL_PROTOCOL_VERSION, "ok": false,
            "result": "failed", "from": from, "to": to, "generation": from,
            "error": format!("upgrade to generation {to} failed: {failure}; generation {from} keeps serving"),
            "reason": failure, "at": at}),
    }
}

/// Who may use the control socket: root, the uid of this process, and
/// optionally the members of one group (primary group `gid`, or listed in
/// `members`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ControlAccess {
    gid: Option<u32>,
    members: Vec<u32>,
}

impl ControlAccess {
    /// Root and this process's own uid only (socket mode 0600).
    pub fn owner_only() -> Self {
        ControlAccess::default()
    }

    /// Also the users whose primary group is `gid` and the uids `members`
    /// (the group's listed members, resolved by the caller; socket mode
    /// 0660, group `gid`).
    pub fn group(gid: u32, members: Vec<u32>) -> Self {
        ControlAccess {
            gid: Some(gid),
            members,
        }
    }

    /// The group allowed besides root, if any.
    pub fn gid(&self) -> Option<u32> {
        self.gid
    }

    /// Whether a peer with `uid` and primary `gid` may send requests.
    ///
    /// ```
    /// use lifecycle_handoff::ControlAccess;
    ///
    /// assert!(ControlAccess::owner_only().allows(0, 0));
    /// assert!(!ControlAccess::owner_only().allows(65534, 65534));
    /// let ops = ControlAccess::group(990, vec![1001]);
    /// assert!(ops.allows(1000, 990) && ops.allows(1001, 100));
    /// assert!(!ops.allows(1002, 100));
    /// ```
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == 0
            || uid == nix::unistd::geteuid().as_raw()
            || self.gid == Some(gid)
            || (self.gid.is_some() && self.members.contains(&uid))
    }

    /// Checks the peer of `stream` (a connected Unix stream socket, std's
    /// or tokio's) with `SO_PEERCRED`.
    pub fn check<S: AsFd>(&self, stream: &S) -> std::result::Result<(), ControlError> {
        let creds = getsockopt(stream, PeerCredentials)
            .map_err(|_| ControlError::Denied { uid: u32::MAX })?;
        if self.allows(creds.uid(), creds.gid()) {
            Ok(())
        } else {
            Err(ControlError::Denied { uid: creds.uid() })
        }
    }
}

/// The listening control socket: bound at a path, mode 0600 (0660 with a
/// group), non-blocking. Dropping it removes the path, unless
/// [`keep_path`](Self::keep_path) was called (a successor serves it on).
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    access: ControlAccess,
    unlink: bool,
}

fn control_err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Control {
        path: path.to_path_buf(),
        action,
        source,
    }
}

impl ControlSocket {
    /// Binds `path` (creating a missing parent directory, mode 0755),
    /// replacing a stale socket that nobody serves; refuses a path that is
    /// not a socket, or a socket another process serves. Sets mode 0600, or
    /// 0660 and group `access.gid()` with a group.
    pub fn bind(path: &Path, access: ControlAccess) -> Result<ControlSocket> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                fs::create_dir_all(dir).map_err(control_err(path, "create the directory of"))?;
                let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
            }
        }
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    return Err(Error::Control {
                        path: path.to_path_buf(),
                        action: "bind (another process serves it; stop it or choose another control_socket)",
                        source: io::Error::from(io::ErrorKind::AddrInUse),
                    });
                }
                fs::remove_file(path).map_err(control_err(path, "remove the stale socket"))?;
            }
            Ok(_) => {
                return Err(Error::Control {
                    path: path.to_path_buf(),
                    action: "bind (the path exists and is not a socket; remove it or choose another control_socket)",
                    source: io::Error::from(io::ErrorKind::AlreadyExists),
                })
            }
            Err(_) => {}
        }
        let listener = UnixListener::bind(path).map_err(control_err(path, "bind"))?;
        let socket = ControlSocket {
            listener,
            path: path.to_path_buf(),
            access,
            unlink: true,
        };
        let mode = if socket.access.gid.is_some() {
            0o660
        } else {
            0o600
        };
        if let Some(gid) = socket.access.gid {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(control_err(path, "chown"))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(control_err(path, "chmod"))?;
        socket
            .listener
            .set_nonblocking(true)
            .map_err(control_err(path, "make non-blocking"))?;
        Ok(socket)
    }

    /// Adopts a listening socket already bound at `path` (passed on by a
    /// predecessor); made non-blocking.
    pub fn from_listener(
        listener: UnixListener,
        path: &Path,
        access: ControlAccess,
    ) -> Result<ControlSocket> {
        listener
            .set_nonblocking(true)
            .map_err(control_err(path, "make non-blocking"))?;
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            access,
            unlink: true,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Who may use it.
    pub fn access(&self) -> &ControlAccess {
        &self.access
    }

    /// The listening socket.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Leaves the path in place when dropped (a successor serves it).
    pub fn keep_path(&mut self) {
        self.unlink = false;
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if self.unlink {
            // Best effort: a missing path is fine.
            let _ = fs::remove_file(&self.path);
        }
    }
}
