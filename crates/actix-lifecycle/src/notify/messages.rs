//! Messages of the [`SystemdNotifier`](crate::SystemdNotifier) and the
//! state it reports.

use std::time::Duration;

use actix::Message;

use lifecycle_handoff::NotifyError;

/// Resolves once the service is ready (every listener accepts): `true`.
/// Resolves `false` when it never will be: shutdown began first, or a
/// listener stopped before it accepted. Works with or without
/// `NOTIFY_SOCKET`, so a child can report readiness to its parent.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "bool")]
pub struct WaitReady;

/// Send `MAINPID=<pid>`. With another process's pid (a successor after an
/// upgrade) this process stops notifying afterwards: it is no longer the
/// main process, and a later `STOPPING=1` from it would be ignored (under
/// `NotifyAccess=main`) or stop the whole unit (under `NotifyAccess=all`).
/// Replies `Ok` without sending when there is no `NOTIFY_SOCKET`.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<(), NotifyError>")]
pub struct SendMainPid {
    /// The process the service manager should treat as the main one.
    pub pid: u32,
}

/// Another process serves now and speaks for the service (a successor
/// after an upgrade, which tells systemd `MAINPID=` itself once this
/// process exited): this notifier sends nothing more — no `STATUS=`, no
/// `WATCHDOG=1`, above all no `STOPPING=1` when this process drains, which
/// would stop the whole unit. Nothing is sent for this message either.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct HandedOver {
    /// The process that serves now.
    pub pid: u32,
}

/// Ask the notifier what it did so far.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "NotifierState")]
pub struct GetNotifierState;

/// The reply to [`GetNotifierState`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NotifierState {
    /// The notification socket in use, as given; `None` when notifications
    /// are off (no `NOTIFY_SOCKET`, or a value that could not be used).
    pub notify_socket: Option<String>,
    /// The watchdog interval when pings are sent (at half of it).
    pub watchdog_interval: Option<Duration>,
    /// True once every listener accepts.
    pub ready: bool,
    /// Set once `MAINPID=` named another process or [`HandedOver`] came:
    /// nothing is sent since.
    pub handed_over_to: Option<u32>,
    /// Datagrams sent successfully.
    pub sent: u64,
    /// Datagrams that could not be sent (each logged).
    pub send_errors: u64,
    /// `WATCHDOG=1` pings sent.
    pub watchdog_pings: u64,
    /// The last `STATUS=` text sent.
    pub last_status: Option<String>,
}
