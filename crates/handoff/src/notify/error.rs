//! Why a notification could not be set up or sent.

use std::io;

/// Why the service manager notification (`NOTIFY_SOCKET`) or the watchdog
/// (`WATCHDOG_USEC`, `WATCHDOG_PID`) could not be used. Every message names
/// the variable or the socket and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` holds something that is not a notification socket
    /// address this crate can send to.
    #[error(
        "NOTIFY_SOCKET={value:?} is not a usable notification socket: {reason}; \
         the service manager sets an absolute path or an @abstract name \
         (unset NOTIFY_SOCKET to send no notifications)"
    )]
    SocketValue {
        /// The variable's value, lossily decoded.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The local datagram socket could not be created.
    #[error("cannot create a Unix datagram socket for notifications: {source}; check the open-files limit")]
    CreateSocket {
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A notification could not be sent.
    #[error(
        "cannot send {what:?} to the notification socket {socket}: {source}; \
         is the service manager still listening on NOTIFY_SOCKET?"
    )]
    Send {
        /// The notification socket, as given.
        socket: String,
        /// The first line of what was to be sent.
        what: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A notification field would break the line-based protocol.
    #[error(
        "notification {state:?} contains a newline, which would split it into two \
         assignments; send one assignment per state (STATUS= text is cleaned by Notifier::status)"
    )]
    Newline {
        /// The offending assignment.
        state: String,
    },
    /// `WATCHDOG_USEC` is not a positive number of microseconds.
    #[error(
        "WATCHDOG_USEC={value:?} is not a watchdog interval: {reason}; the service manager \
         sets a positive number of microseconds (WatchdogSec= in the unit), unset \
         WATCHDOG_USEC to run without the watchdog"
    )]
    WatchdogUsec {
        /// The variable's value, lossily decoded.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `WATCHDOG_PID` is not a process id.
    #[error(
        "WATCHDOG_PID={value:?} is not a process id: {reason}; the service manager sets \
         the main process id, unset WATCHDOG_PID to let this process answer the watchdog"
    )]
    WatchdogPid {
        /// The variable's value, lossily decoded.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl NotifyError {
    /// True when a send failed only because the service manager's queue
    /// stayed full for the whole send timeout (`WouldBlock`, at once with a
    /// zero timeout): a later send of the same notification may succeed.
    ///
    /// ```
    /// use lifecycle_handoff::NotifyError;
    ///
    /// let full = NotifyError::Send {
    ///     socket: "/run/systemd/notify".into(),
    ///     what: "READY=1".into(),
    ///     source: std::io::ErrorKind::WouldBlock.into(),
    /// };
    /// assert!(full.is_queue_full());
    /// ```
    pub fn is_queue_full(&self) -> bool {
        matches!(self, NotifyError::Send { source, .. } if source.kind() == io::ErrorKind::WouldBlock)
    }
}
