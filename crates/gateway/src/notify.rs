//! Telling systemd how the service fares (`Type=notify`) when this process
//! is the service's main process: `READY=1`, `STATUS=`, `STOPPING=1` and
//! `WATCHDOG=1` through actix-lifecycle's [`SystemdNotifier`].

use actix::Addr;
use actix_lifecycle::{Lifecycle, NotifyEnv, SystemdNotifier};
use lifecycle_handoff::{Handoff, Lineage, Mode};
use slog::{info, Logger};

/// Whether the serving process sends systemd notifications, and with which
/// variables (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
///
/// The rule, by hand-off mode:
///
/// * **immediate**, **systemd** (socket-activated): this process is the
///   main one; it notifies when `NOTIFY_SOCKET` is set.
/// * **inherited** from a privileged parent: the parent is the main
///   process and speaks for the service (`READY=1` with `MAINPID=`,
///   `STOPPING=1`); an upgrade-capable parent does not even pass
///   `NOTIFY_SOCKET`. A parent that passes no lineage (no upgrade support)
///   may leave the variable in place: it is ignored, and the child stays
///   silent.
/// * **inherited** with a lineage but with `NOTIFY_SOCKET` still set: a
///   successor started by its predecessor, which goes silent once it is
///   ready; it notifies, and names itself with `MAINPID=` once the
///   predecessor has exited (then it is systemd's own child).
/// * **privileged**: the parent's own notifications are not sent from here.
///
/// Without `NOTIFY_SOCKET` nothing is ever sent.
///
/// ```
/// use lifecycle_gateway::Notifications;
/// use lifecycle_handoff::{Lineage, Mode, NotifyEnv};
///
/// let env = NotifyEnv::new().notify_socket("/run/systemd/notify");
/// assert!(Notifications::new(Mode::Systemd, None, env.clone()).is_on());
/// assert!(Notifications::new(Mode::Immediate, None, env.clone()).is_on());
/// // A child of a privileged parent stays silent...
/// assert!(!Notifications::new(Mode::Inherited, None, env.clone()).is_on());
/// // ... unless its predecessor handed it the service (and the variable).
/// assert!(Notifications::new(Mode::Inherited, Some(Lineage::FIRST), env).is_on());
/// // Without NOTIFY_SOCKET there is nothing to send to.
/// assert!(!Notifications::new(Mode::Immediate, None, NotifyEnv::new()).is_on());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notifications {
    env: NotifyEnv,
    silenced: Option<&'static str>,
}

impl Notifications {
    /// The rule applied to `mode` and `lineage` (see the type), with the
    /// service manager's variables `env`.
    pub fn new(mode: Mode, lineage: Option<Lineage>, env: NotifyEnv) -> Notifications {
        let silenced = match mode {
            Mode::Immediate | Mode::Systemd => None,
            Mode::Inherited if lineage.is_some() => None,
            Mode::Inherited => Some(
                "started by a privileged parent, which is the main process and \
                 notifies for the service",
            ),
            Mode::Privileged => Some("the privileged parent sends its own notifications"),
        };
        Notifications { env, silenced }
    }

    /// For the process `handoff` describes, with this process's variables
    /// (read now, left in the environment).
    pub fn for_handoff(handoff: &Handoff) -> Notifications {
        Notifications::new(handoff.mode(), handoff.lineage(), NotifyEnv::from_process())
    }

    /// Nothing is sent, whatever the environment holds.
    pub fn off() -> Notifications {
        Notifications {
            env: NotifyEnv::new(),
            silenced: None,
        }
    }

    /// True when notifications will be sent: `NOTIFY_SOCKET` is set and
    /// this process is the one to send them.
    pub fn is_on(&self) -> bool {
        self.silenced.is_none() && self.env.has_notify_socket()
    }

    /// Starts the [`SystemdNotifier`] for `lifecycle` on the current arbiter
    /// (the System's, so that a stuck System stops the watchdog pings), or
    /// logs why not and returns `None`.
    ///
    /// Call it once every listener accepts and the broker closed what no
    /// listener claimed: `READY=1` goes out at once, then `STATUS=` with the
    /// live connections per listener (at most once a second), `WATCHDOG=1`
    /// at half of `WATCHDOG_USEC`, and `STOPPING=1` when draining starts.
    pub fn start(self, lifecycle: &Lifecycle, log: &Logger) -> Option<Addr<SystemdNotifier>> {
        if let Some(why) = self.silenced {
            if self.env.has_notify_socket() {
                info!(log, "NOTIFY_SOCKET ignored: this process does not notify"; "reason" => why);
            }
            return None;
        }
        if !self.env.has_notify_socket() {
            return None;
        }
        Some(
            SystemdNotifier::builder(lifecycle, self.env)
                .logger(log.clone())
                .start(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_socket() -> NotifyEnv {
        NotifyEnv::new().notify_socket("/run/systemd/notify")
    }

    #[test]
    fn the_rule_by_mode() {
        let on = |mode, lineage| Notifications::new(mode, lineage, with_socket()).is_on();
        assert!(on(Mode::Immediate, None));
        assert!(on(Mode::Systemd, None));
        assert!(on(Mode::Inherited, Some(Lineage::FIRST)));
        assert!(!on(Mode::Inherited, None));
        assert!(!on(Mode::Privileged, None));
        assert!(!on(Mode::Privileged, Some(Lineage::FIRST)));
    }

    #[test]
    fn nothing_without_a_notify_socket() {
        for env in [NotifyEnv::new(), NotifyEnv::new().notify_socket("")] {
            for mode in [Mode::Immediate, Mode::Systemd, Mode::Inherited] {
                let n = Notifications::new(mode, Some(Lineage::FIRST), env.clone());
                assert!(!n.is_on(), "{mode:?} {env:?}");
            }
        }
        assert!(!Notifications::off().is_on());
    }

    #[test]
    fn start_sends_nothing_when_off() {
        let log = Logger::root(slog::Discard, slog::o!());
        actix::System::new().block_on(async {
            let lifecycle = Lifecycle::builder(Default::default())
                .handle_signals(false)
                .start()
                .unwrap();
            let silenced = Notifications::new(Mode::Inherited, None, with_socket());
            assert!(silenced.start(&lifecycle, &log).is_none());
            assert!(Notifications::off().start(&lifecycle, &log).is_none());
        });
    }
}
