//! [`NotifierBuilder`]: configuration of a [`SystemdNotifier`].

use std::collections::VecDeque;
use std::time::Duration;

use actix::{Actor, Addr};
use slog::{error, o, warn, Logger};

use super::{NotifyEnv, Readiness, SystemdNotifier, ACTOR_SEND_TIMEOUT, DEFAULT_STATUS_INTERVAL};
use crate::broker::FdBroker;
use crate::lifecycle::Lifecycle;
use crate::listener::ListenerActor;
use crate::phase::ShutdownHandle;
use crate::registry::RegistryHandle;

/// What the notifier reports on: the lifecycle's phase, connections and
/// sockets, and the listeners whose readiness it waits for.
pub(super) struct Watched {
    pub(super) shutdown: ShutdownHandle,
    pub(super) connections: RegistryHandle,
    pub(super) broker: Addr<FdBroker>,
    pub(super) listeners: Vec<Addr<ListenerActor>>,
}

/// Builds a [`SystemdNotifier`]; see there.
#[must_use]
pub struct NotifierBuilder {
    env: NotifyEnv,
    watched: Watched,
    log: Logger,
    status_interval: Duration,
}

impl std::fmt::Debug for NotifierBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifierBuilder")
            .field("env", &self.env)
            .field("listeners", &self.watched.listeners.len())
            .field("status_interval", &self.status_interval)
            .finish()
    }
}

impl NotifierBuilder {
    pub(super) fn new(lifecycle: &Lifecycle, env: NotifyEnv) -> Self {
        NotifierBuilder {
            env,
            watched: Watched {
                shutdown: lifecycle.shutdown_handle(),
                connections: lifecycle.connections().clone(),
                broker: lifecycle.broker().clone(),
                listeners: Vec::new(),
            },
            log: lifecycle.logger().clone(),
            status_interval: DEFAULT_STATUS_INTERVAL,
        }
    }

    /// Logs go to `log` (key `actor=notify`). Default: the lifecycle's logger.
    pub fn logger(mut self, log: Logger) -> Self {
        self.log = log;
        self
    }

    /// Readiness also waits until this listener reports that it accepts
    /// ([`GetListenerInfo`](crate::GetListenerInfo)). Give every listener actor you start.
    pub fn listener(mut self, listener: Addr<ListenerActor>) -> Self {
        self.watched.listeners.push(listener);
        self
    }

    /// [`listener`](Self::listener) for each of `listeners`.
    pub fn listeners(mut self, listeners: impl IntoIterator<Item = Addr<ListenerActor>>) -> Self {
        self.watched.listeners.extend(listeners);
        self
    }

    /// The least time between two `STATUS=` notifications. Default 1 s; a
    /// status is sent only when its text changed.
    pub fn status_interval(mut self, interval: Duration) -> Self {
        self.status_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The actor, not started. Bad `NOTIFY_SOCKET`, `WATCHDOG_USEC` or
    /// `WATCHDOG_PID` values are logged as errors naming the variable, and
    /// that part is turned off; nothing panics.
    pub fn build(self) -> SystemdNotifier {
        let log = self.log.new(o!("actor" => "notify"));
        let sender = match self.env.sender() {
            Ok(Some(sender)) => match sender.send_timeout(ACTOR_SEND_TIMEOUT) {
                Ok(sender) => Some(sender),
                Err(e) => {
                    error!(log, "cannot set up notifications; none will be sent"; "error" => %e);
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                error!(log, "cannot set up notifications; none will be sent"; "error" => %e);
                None
            }
        };
        let watchdog = match self.env.watchdog() {
            Ok(Some(interval)) if sender.is_none() => {
                warn!(log, "WATCHDOG_USEC is set but there is no NOTIFY_SOCKET to ping";
                    "interval_ms" => interval.as_millis() as u64);
                None
            }
            Ok(w) => w,
            Err(e) => {
                error!(log, "watchdog turned off"; "error" => %e);
                None
            }
        };
        SystemdNotifier {
            sender,
            watchdog,
            watched: self.watched,
            log,
            status_interval: self.status_interval,
            readiness: Readiness::Waiting,
            ready_waiters: Vec::new(),
            outbox: VecDeque::new(),
            outbox_retries: 0,
            outbox_retry_scheduled: false,
            handed_over_to: None,
            last_status: None,
            last_status_at: None,
            sent: 0,
            send_errors: 0,
            failing: false,
            watchdog_pings: 0,
        }
    }

    /// Builds and starts the actor on the current arbiter. Start it on the
    /// arbiter whose liveness the watchdog should prove (normally the
    /// System's, where the lifecycle runs).
    pub fn start(self) -> Addr<SystemdNotifier> {
        self.build().start()
    }
}
