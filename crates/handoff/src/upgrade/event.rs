//! What the upgrade supervisor reports: one [`SupervisorEvent`] per thing
//! that happened, each with a log line (`Display`) that names the
//! generations involved.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The supervisor's counters, as of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct UpgradeStats {
    /// The serving generation (0 before the first child is ready).
    pub serving: u64,
    /// Upgrades that succeeded (`lifecycle_upgrades_total{result="ok"}`).
    pub succeeded: u64,
    /// Upgrades that failed (`lifecycle_upgrades_total{result="failed"}`).
    pub failed: u64,
}

/// Why an upgrade failed. The old child keeps serving in every case.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpgradeFailure {
    /// A privileged file could not be re-opened.
    Reopen {
        /// The file.
        path: PathBuf,
        /// The error, as text.
        error: String,
    },
    /// The new child could not be started.
    Spawn {
        /// The error, as text.
        error: String,
    },
    /// The new child exited before reporting ready.
    Exited {
        /// Its exit code (128 + signal for a signal death).
        code: i32,
    },
    /// The new child closed the readiness channel without reporting ready
    /// and kept running; it was killed.
    ClosedChannel,
    /// The new child did not report ready in time; it was told to stop
    /// (SIGTERM) and drains within the child grace.
    Timeout {
        /// The limit that passed.
        after: Duration,
    },
    /// SIGTERM or SIGINT arrived during the upgrade, or the serving child
    /// exited: the new child was told to stop and had the child grace to
    /// drain.
    Stopping,
}

impl fmt::Display for UpgradeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpgradeFailure::Reopen { path, error } => {
                write!(f, "cannot re-open {path:?}: {error}")
            }
            UpgradeFailure::Spawn { error } => write!(f, "cannot start the new child: {error}"),
            UpgradeFailure::Exited { code } => {
                write!(
                    f,
                    "the new child exited with code {code} before it was ready"
                )
            }
            UpgradeFailure::ClosedChannel => write!(
                f,
                "the new child closed its readiness channel without reporting ready"
            ),
            UpgradeFailure::Timeout { after } => {
                write!(f, "the new child was not ready within {after:?}")
            }
            UpgradeFailure::Stopping => write!(f, "the service is stopping"),
        }
    }
}

/// One thing the upgrade supervisor did or saw, for the caller's log and
/// metrics (the supervisor itself logs nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SupervisorEvent {
    /// A child was started (the first one, or an upgrade candidate).
    Started {
        /// Its generation.
        generation: u64,
        /// Its pid.
        pid: u32,
    },
    /// The first child reported ready: the service is up.
    Ready {
        /// Its generation (1).
        generation: u64,
        /// Its pid.
        pid: u32,
    },
    /// An upgrade began.
    UpgradeStarted {
        /// The serving generation.
        from: u64,
        /// The new generation.
        to: u64,
        /// The signal that asked for it (`SIGHUP`, `SIGUSR2`).
        signal: &'static str,
    },
    /// An upgrade signal arrived while a child was still starting; it runs
    /// once that one is settled (at most one waits).
    UpgradeQueued {
        /// The signal.
        signal: &'static str,
        /// The generation still starting.
        starting: u64,
    },
    /// An upgrade signal was dropped.
    UpgradeIgnored {
        /// The signal.
        signal: &'static str,
        /// Why (one already waits, or the service is stopping).
        reason: &'static str,
    },
    /// A request arrived on the control socket (from an allowed peer).
    ControlRequest {
        /// The command (`status`, `upgrade --wait`, ...).
        command: &'static str,
    },
    /// The new child is ready and serving; the old one was told to drain.
    UpgradeSucceeded {
        /// The old generation (now draining).
        from: u64,
        /// The new, serving generation.
        to: u64,
        /// The new child's pid.
        pid: u32,
        /// The counters after this upgrade.
        stats: UpgradeStats,
    },
    /// The upgrade failed; the old child keeps serving.
    UpgradeFailed {
        /// The serving generation.
        from: u64,
        /// The generation that failed.
        to: u64,
        /// Why.
        failure: UpgradeFailure,
        /// The counters after this failure.
        stats: UpgradeStats,
    },
    /// A drained old child exited (logged, not the service's exit).
    OldChildExited {
        /// Its generation.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// Its exit code.
        code: i32,
    },
    /// A new child that never became the serving one, told to stop (its
    /// upgrade failed, or the service stopped while it started), exited
    /// after its drain or was killed at the end of the child grace (see
    /// [`UpgradeSupervisor::child_grace`](crate::UpgradeSupervisor::child_grace)).
    CandidateExited {
        /// Its generation.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// Its exit code (137 when it was killed).
        code: i32,
        /// It outlived the child grace and was killed (SIGKILL).
        killed: bool,
    },
    /// SIGTERM or SIGINT was forwarded.
    Forwarded {
        /// The signal.
        signal: &'static str,
        /// The generations it went to (the serving one, and a candidate).
        generations: Vec<u64>,
    },
    /// The serving child exited; the supervisor returns its code.
    ServingExited {
        /// Its generation.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// Its exit code (128 + signal for a signal death).
        code: i32,
    },
    /// A notification to systemd could not be sent (the service goes on).
    NotifyFailed {
        /// The first line of the message.
        message: String,
        /// The error, as text.
        error: String,
    },
    /// systemd asked for a watchdog (`WATCHDOG_USEC`, from `WatchdogSec=`):
    /// the parent pings at half of `interval`, each time after the serving
    /// child answered its control endpoint (`child_checked`), or, without
    /// a control socket, for its own loop only.
    WatchdogStarted {
        /// systemd's interval.
        interval: Duration,
        /// Whether each ping waits for the serving child's answer.
        child_checked: bool,
    },
    /// Watchdog pings go out (again): the first one, or the first after
    /// pings were withheld.
    WatchdogPinging {
        /// The serving generation that answered (`None`: no child serves
        /// yet, the parent pinged for itself).
        generation: Option<u64>,
    },
    /// A watchdog ping was withheld: the serving child did not answer in
    /// time (systemd's `WatchdogSec=` fires if this goes on), or the ping
    /// could not be sent.
    WatchdogWithheld {
        /// The serving generation asked.
        generation: Option<u64>,
        /// Why, as text.
        error: String,
    },
    /// Upgrade candidates cannot start at a lower priority (see
    /// [`UpgradeSupervisor::start_niceness`](crate::UpgradeSupervisor::start_niceness)
    /// and [`start_idle`](crate::UpgradeSupervisor::start_idle)):
    /// this process could not restore their priority once they are ready.
    StartNicenessOff {
        /// Why, as text.
        reason: String,
    },
    /// A candidate that started at a lower priority was still not ready
    /// after `after`: its threads were set back to the parent's priority
    /// early, so that a busy machine cannot starve the upgrade into its
    /// ready timeout.
    StartPriorityLifted {
        /// Its generation.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// How long it had run at the lower priority.
        after: Duration,
        /// How many of its threads were set.
        threads: usize,
        /// What went wrong, if anything.
        error: Option<String>,
    },
    /// This process did its share of an upgrade under `SCHED_IDLE` (see
    /// [`UpgradeSupervisor::start_idle`](crate::UpgradeSupervisor::start_idle))
    /// and could not set itself back: it goes on at the idle priority.
    OwnPriorityNotRestored {
        /// Why, as text.
        error: String,
    },
    /// A candidate that started at a lower priority is ready: its threads
    /// were set back to the parent's nice value.
    PriorityRestored {
        /// Its generation.
        generation: u64,
        /// Its pid.
        pid: u32,
        /// How many of its threads were set.
        threads: usize,
        /// What went wrong, if anything (the generation serves regardless,
        /// possibly at the lower priority).
        error: Option<String>,
    },
}

impl fmt::Display for SupervisorEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SupervisorEvent::Started { generation, pid } => {
                write!(f, "started generation {generation} (pid {pid})")
            }
            SupervisorEvent::Ready { generation, pid } => {
                write!(
                    f,
                    "generation {generation} (pid {pid}) is ready and serving"
                )
            }
            SupervisorEvent::UpgradeStarted { from, to, signal } => {
                write!(f, "{signal}: upgrading from generation {from} to {to}")
            }
            SupervisorEvent::UpgradeQueued { signal, starting } => write!(
                f,
                "{signal}: generation {starting} is still starting, the upgrade waits for it"
            ),
            SupervisorEvent::UpgradeIgnored { signal, reason } => {
                write!(f, "{signal}: upgrade not started: {reason}")
            }
            SupervisorEvent::ControlRequest { command } => {
                write!(f, "control socket: {command}")
            }
            SupervisorEvent::UpgradeSucceeded {
                from,
                to,
                pid,
                stats,
            } => write!(
                f,
                "upgrade from generation {from} to {to} succeeded: generation {to} (pid {pid}) \
                 serves, generation {from} drains (upgrades ok {}, failed {})",
                stats.succeeded, stats.failed
            ),
            SupervisorEvent::UpgradeFailed {
                from,
                to,
                failure,
                stats,
            } => write!(
                f,
                "upgrade from generation {from} to {to} failed: {failure}; generation {from} \
                 keeps serving (upgrades ok {}, failed {})",
                stats.succeeded, stats.failed
            ),
            SupervisorEvent::OldChildExited {
                generation,
                pid,
                code,
            } => write!(
                f,
                "old generation {generation} (pid {pid}) exited with code {code}"
            ),
            SupervisorEvent::CandidateExited {
                generation,
                pid,
                code,
                killed: false,
            } => write!(
                f,
                "stopped new generation {generation} (pid {pid}) exited with code {code}"
            ),
            SupervisorEvent::CandidateExited {
                generation,
                pid,
                code,
                killed: true,
            } => write!(
                f,
                "stopped new generation {generation} (pid {pid}) outlived the child grace and \
                 was killed (code {code})"
            ),
            SupervisorEvent::Forwarded {
                signal,
                generations,
            } => write!(f, "{signal} forwarded to generations {generations:?}"),
            SupervisorEvent::ServingExited {
                generation,
                pid,
                code,
            } => write!(
                f,
                "serving generation {generation} (pid {pid}) exited with code {code}"
            ),
            SupervisorEvent::NotifyFailed { message, error } => {
                write!(f, "cannot notify systemd ({message}): {error}")
            }
            SupervisorEvent::WatchdogStarted {
                interval,
                child_checked: true,
            } => write!(
                f,
                "watchdog: systemd expects a ping within {interval:?}; one goes out every \
                 {:?} once the serving child answered its control endpoint",
                *interval / 2
            ),
            SupervisorEvent::WatchdogStarted {
                interval,
                child_checked: false,
            } => write!(
                f,
                "watchdog: systemd expects a ping within {interval:?}; without a control \
                 socket the pings (every {:?}) prove this parent alive, not the child: \
                 configure one so that they wait for the serving child's answer",
                *interval / 2
            ),
            SupervisorEvent::WatchdogPinging {
                generation: Some(generation),
            } => write!(
                f,
                "watchdog: generation {generation} answers, pinging systemd"
            ),
            SupervisorEvent::WatchdogPinging { generation: None } => {
                write!(
                    f,
                    "watchdog: no child serves yet, pinging systemd for the parent"
                )
            }
            SupervisorEvent::WatchdogWithheld { generation, error } => {
                let who = generation
                    .map_or_else(|| "the parent".to_owned(), |g| format!("generation {g}"));
                write!(
                    f,
                    "watchdog: ping for {who} withheld ({error}); systemd stops the unit if \
                     this goes on for its WatchdogSec="
                )
            }
            SupervisorEvent::StartNicenessOff { reason } => write!(
                f,
                "upgrade candidates start at the normal priority: {reason}"
            ),
            SupervisorEvent::StartPriorityLifted {
                generation,
                pid,
                after,
                threads,
                error: None,
            } => write!(
                f,
                "generation {generation} (pid {pid}) is not ready after {after:?} at the lower \
                 start priority (a busy machine): its {threads} threads are back at the normal \
                 priority"
            ),
            SupervisorEvent::StartPriorityLifted {
                generation,
                pid,
                after,
                threads,
                error: Some(error),
            } => write!(
                f,
                "generation {generation} (pid {pid}) is not ready after {after:?} and may keep \
                 its start-up priority ({threads} threads set back): {error}"
            ),
            SupervisorEvent::OwnPriorityNotRestored { error } => write!(
                f,
                "the supervisor stays at the idle priority it upgrades at: {error}"
            ),
            SupervisorEvent::PriorityRestored {
                generation,
                pid,
                threads,
                error: None,
            } => write!(
                f,
                "generation {generation} (pid {pid}) is ready: its {threads} threads are back \
                 at the normal priority"
            ),
            SupervisorEvent::PriorityRestored {
                generation,
                pid,
                threads,
                error: Some(error),
            } => write!(
                f,
                "generation {generation} (pid {pid}) is ready but may keep its start-up \
                 priority ({threads} threads set back): {error}"
            ),
        }
    }
}
