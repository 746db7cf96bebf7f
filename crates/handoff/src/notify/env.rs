//! [`NotifyEnv`]: the service manager's variables, read once and injectable.

use std::ffi::OsString;
use std::time::Duration;

use super::error::NotifyError;
use super::{Notifier, NOTIFY_SOCKET, WATCHDOG_PID, WATCHDOG_USEC};
use crate::environment::{Environment, ProcessEnvironment};

/// The variables a service manager passes about notifications:
/// `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
///
/// Read them once at start with [`from_process`](Self::from_process) (or
/// [`from_environment`](Self::from_environment) from any [`Environment`]),
/// or set them explicitly (tests, or a process that got them from
/// elsewhere); nothing here reads the environment again. This is the only
/// place that parses them.
///
/// ```
/// use std::time::Duration;
/// use lifecycle_handoff::NotifyEnv;
///
/// let env = NotifyEnv::new().watchdog_usec("30000000");
/// assert_eq!(env.watchdog().unwrap(), Some(Duration::from_secs(30)));
/// assert!(env.sender().unwrap().is_none(), "no NOTIFY_SOCKET: nothing to send to");
///
/// let bad = NotifyEnv::new().watchdog_usec("30s");
/// assert!(bad.watchdog().unwrap_err().to_string().contains("WATCHDOG_USEC"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyEnv {
    notify_socket: Option<OsString>,
    watchdog_usec: Option<OsString>,
    watchdog_pid: Option<OsString>,
}

impl NotifyEnv {
    /// No variable set: nothing is sent and there is no watchdog.
    pub fn new() -> NotifyEnv {
        NotifyEnv::default()
    }

    /// The three variables of this process, read now. They are left in the
    /// environment: remove them from children you spawn
    /// (`Command::env_remove`) so they do not notify in your name.
    pub fn from_process() -> NotifyEnv {
        NotifyEnv::from_environment(&ProcessEnvironment)
    }

    /// The three variables as `env` holds them, read now (and left there).
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use lifecycle_handoff::NotifyEnv;
    ///
    /// let env = BTreeMap::from([("NOTIFY_SOCKET".into(), "@systemd-notify".into())]);
    /// let env = NotifyEnv::from_environment(&env);
    /// assert!(env.has_notify_socket());
    /// assert_eq!(env.watchdog().unwrap(), None);
    /// ```
    pub fn from_environment(env: &impl Environment) -> NotifyEnv {
        NotifyEnv {
            notify_socket: env.var(NOTIFY_SOCKET),
            watchdog_usec: env.var(WATCHDOG_USEC),
            watchdog_pid: env.var(WATCHDOG_PID),
        }
    }

    /// Sets `NOTIFY_SOCKET`: an absolute path or `@abstract-name`.
    pub fn notify_socket(mut self, value: impl Into<OsString>) -> NotifyEnv {
        self.notify_socket = Some(value.into());
        self
    }

    /// Sets `WATCHDOG_USEC`: the watchdog interval in microseconds.
    pub fn watchdog_usec(mut self, value: impl Into<OsString>) -> NotifyEnv {
        self.watchdog_usec = Some(value.into());
        self
    }

    /// Sets `WATCHDOG_PID`: the process the watchdog is meant for.
    pub fn watchdog_pid(mut self, value: impl Into<OsString>) -> NotifyEnv {
        self.watchdog_pid = Some(value.into());
        self
    }

    /// True when `NOTIFY_SOCKET` is set and not empty.
    pub fn has_notify_socket(&self) -> bool {
        self.notify_socket.as_ref().is_some_and(|v| !v.is_empty())
    }

    /// A sender for `NOTIFY_SOCKET`; `None` when it is unset or empty (an
    /// empty value is the usual way to turn notifications off, e.g.
    /// `NOTIFY_SOCKET= program`).
    pub fn sender(&self) -> Result<Option<Notifier>, NotifyError> {
        match &self.notify_socket {
            Some(value) if !value.is_empty() => Notifier::new(value).map(Some),
            _ => Ok(None),
        }
    }

    /// The watchdog interval the service manager expects pings within, as
    /// `sd_watchdog_enabled(3)` decides: `None` when `WATCHDOG_USEC` is
    /// unset or `WATCHDOG_PID` names another process; an error naming the
    /// variable when either is not a number (or the interval is zero).
    pub fn watchdog(&self) -> Result<Option<Duration>, NotifyError> {
        let Some(raw) = &self.watchdog_usec else {
            return Ok(None);
        };
        let usec_err = |reason: &str| NotifyError::WatchdogUsec {
            value: lossy(raw),
            reason: reason.to_owned(),
        };
        let usec = whole_number(raw).map_err(|reason| usec_err(&reason))?;
        if usec == 0 {
            return Err(usec_err("zero would need pings without pause"));
        }
        if usec == u64::MAX {
            return Err(usec_err("it is the infinity marker"));
        }
        if let Some(raw_pid) = &self.watchdog_pid {
            let pid_err = |reason: &str| NotifyError::WatchdogPid {
                value: lossy(raw_pid),
                reason: reason.to_owned(),
            };
            let pid = whole_number(raw_pid).map_err(|reason| pid_err(&reason))?;
            let pid = u32::try_from(pid).map_err(|_| pid_err("too large for a process id"))?;
            if pid == 0 {
                return Err(pid_err("0 is not a process"));
            }
            if pid != std::process::id() {
                return Ok(None);
            }
        }
        Ok(Some(Duration::from_micros(usec)))
    }
}

/// A decimal number of digits only (no sign, no spaces), or why not.
fn whole_number(raw: &OsString) -> Result<u64, String> {
    let text = raw.to_str().ok_or("it is not UTF-8")?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a whole number".to_owned());
    }
    text.parse()
        .map_err(|e| format!("not a whole number ({e})"))
}

/// Lossy text of a variable's value, for error messages.
fn lossy(value: &OsString) -> String {
    value.to_string_lossy().into_owned()
}
