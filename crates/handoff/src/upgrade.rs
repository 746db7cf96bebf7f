//! The privileged parent with zero-downtime upgrades: it keeps the
//! listeners, and on SIGHUP or SIGUSR2 starts a new child of the binary on
//! disk with the same listeners and freshly re-opened files, waits until it
//! is ready, then tells the old one to drain.

mod child;
mod control;
mod event;
mod priority;
mod relay;
mod run;
mod settle;
mod watchdog;

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

pub use event::{SupervisorEvent, UpgradeFailure, UpgradeStats};
pub use relay::CHILD_CONTROL_NAME;

use crate::control::server::ControlServer;
use crate::control::ControlSocket;
use crate::error::{Error, Result};
use crate::inventory::Inventory;
use crate::notify::{Notifier, NotifyEnv, NOTIFY_SOCKET, WATCHDOG_PID, WATCHDOG_USEC};
use crate::spawn::ChildSpawner;
use run::Loop;

/// Seconds since the epoch, for control replies and drain start times
/// (here, where both the loop and its control side reach it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// How long the parent waits for a new child's ready message by default.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a new child told to stop may drain before it is killed, by
/// default: actix-lifecycle's default drain (3 s) and abort (1 s) graces,
/// and 1 s to exit.
pub const DEFAULT_CHILD_GRACE: Duration = Duration::from_secs(5);

/// How long a child that closed its readiness channel may take to exit
/// before it is killed.
const CLOSED_CHANNEL_GRACE: Duration = Duration::from_secs(1);

/// The privileged parent's supervision loop, with upgrades.
///
/// Create it in the main thread before other threads exist (it blocks
/// SIGTERM, SIGINT, SIGHUP, SIGUSR2 and SIGCHLD and reads them from a
/// signalfd), then [`run`](Self::run) it with the spawner and the kept
/// inventory. It:
///
/// 1. starts generation 1 with the listeners, the files and a readiness
///    channel ([`ChildSpawner::spawn_with_ready`]), then closes its copies of
///    the files (it keeps their paths);
/// 2. when the child reports ready, sends systemd `READY=1` and
///    `MAINPID=<own pid>` (only with `NOTIFY_SOCKET`; the child never gets
///    `NOTIFY_SOCKET`, `WATCHDOG_USEC` or `WATCHDOG_PID`);
/// 3. on SIGHUP or SIGUSR2: sends `RELOADING=1`, re-opens every file from
///    its path (a rotated certificate is picked up), starts generation n+1
///    of the program *path* resolved at start-up (the binary now on disk)
///    with the same listeners, and closes the re-opened copies;
///    - ready within the timeout → the old child's channel is closed, then
///      it gets SIGTERM (a [`ChannelWatch`](crate::ChannelWatch) tells it
///      that this is an upgrade drain, not a stop; it drains and
///      exits; its exit is reported, not passed on), `READY=1` and
///      `STATUS=serving generation n+1`;
///    - exited, or closed its channel → reaped (killed if it does not exit
///      within a second), the old child keeps serving, `READY=1` and
///      `STATUS=upgrade failed: ...`;
///    - not ready in time → the same, but the new child may already serve
///      sessions it accepted from the shared listeners: its channel is
///      closed (it drains as for an upgrade: stops accepting at once) and it
///      gets SIGTERM; it is killed only if it is still running after the
///      [child grace](Self::child_grace). The supervisor goes on meanwhile;
/// 4. on SIGTERM or SIGINT: `STOPPING=1`, forwards the signal to the
///    serving child and any candidate, and returns the serving child's exit
///    code once it exits (after waiting for draining old children, which
///    would otherwise die with the parent through their death signal). A
///    candidate still running then (or when the serving child exits on its
///    own during an upgrade) gets SIGTERM if it has not had one, and the
///    child grace before SIGKILL: sessions it accepted finish or get the
///    service's stop reply rather than a reset.
///
/// One upgrade at a time: an upgrade signal that arrives while a child is
/// starting is **queued** (at most one waits; a further one is ignored with
/// an event) and runs once the start is settled. Signals during stopping are
/// ignored with an event.
///
/// If the first child exits before it is ready, `run` returns its exit code;
/// if it does not report ready in time it is told to stop (SIGTERM, then
/// SIGKILL after the child grace) and `run` fails with [`Error::NotReady`]. A child started this way must report ready with
/// [`ReadyChannel::notify_ready`](crate::ReadyChannel::notify_ready).
///
/// ```no_run
/// use lifecycle_handoff::{ChildSpawner, Handoff, ListenerSpec, Mode, TargetUser, UpgradeSupervisor};
///
/// # fn main() -> Result<(), lifecycle_handoff::Error> {
/// let user = TargetUser::lookup("nobody")?;
/// let mut handoff = Handoff::with_mode("LIFECYCLE", Mode::Privileged)?;
/// drop(handoff.listen(&ListenerSpec::tcp("smtp", "0.0.0.0:25".parse().unwrap()))?);
/// drop(handoff.open_privileged("/etc/gw/tls.key")?);
/// let kept = handoff.into_inventory();
/// let spawner = ChildSpawner::new()?.user(user);
/// let code = UpgradeSupervisor::new()?.run(spawner, kept, |event| eprintln!("{event}"))?;
/// std::process::exit(code);
/// # }
/// ```
#[derive(Debug)]
pub struct UpgradeSupervisor {
    signals: SignalFd,
    previous: SigSet,
    ready_timeout: Duration,
    child_grace: Duration,
    notifier: Option<Notifier>,
    watchdog: Option<Duration>,
    control: Option<ControlSocket>,
    start_niceness: i32,
    start_idle: bool,
}

impl UpgradeSupervisor {
    /// Blocks the supervised signals in this thread and opens a signalfd
    /// for them; reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`
    /// (a bad value is an error naming the variable).
    pub fn new() -> Result<Self> {
        let env = NotifyEnv::from_process();
        let notifier = env.sender()?;
        let watchdog = env.watchdog()?;
        let fail = |operation| {
            move |errno: nix::errno::Errno| Error::Supervise {
                pid: 0,
                operation,
                source: io::Error::from(errno),
            }
        };
        // An inherited "ignore" would hide every child's exit.
        crate::supervise::default_sigchld()?;
        let mut set = SigSet::empty();
        for signal in [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGUSR2,
            Signal::SIGCHLD,
        ] {
            set.add(signal);
        }
        let mut previous = SigSet::empty();
        nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut previous))
            .map_err(fail("pthread_sigmask"))?;
        let signals =
            match SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC) {
                Ok(signals) => signals,
                Err(errno) => {
                    let _ = nix::sys::signal::pthread_sigmask(
                        SigmaskHow::SIG_SETMASK,
                        Some(&previous),
                        None,
                    );
                    return Err(fail("signalfd")(errno));
                }
            };
        Ok(UpgradeSupervisor {
            signals,
            previous,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            child_grace: DEFAULT_CHILD_GRACE,
            notifier,
            watchdog,
            control: None,
            start_niceness: 0,
            start_idle: false,
        })
    }

    /// How long a new child may take to report ready (default 30 s).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use lifecycle_handoff::UpgradeSupervisor;
    /// let supervisor = UpgradeSupervisor::new()?.ready_timeout(Duration::from_secs(10));
    /// # Ok::<(), lifecycle_handoff::Error>(())
    /// ```
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// How long a new child told to stop without ever serving as the main
    /// child may take to exit before it is killed (SIGKILL); default
    /// [`DEFAULT_CHILD_GRACE`]. It concerns a child that was not ready in
    /// time, and one still starting when the service stops or the serving
    /// child exits: it may already serve sessions it accepted from the
    /// shared listeners. Set it to the child's own drain and abort graces
    /// plus a margin to exit.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use lifecycle_handoff::UpgradeSupervisor;
    /// // The child drains for 3 s, aborts for 1 s, and needs 1 s to exit.
    /// let supervisor = UpgradeSupervisor::new()?.child_grace(Duration::from_secs(5));
    /// # Ok::<(), lifecycle_handoff::Error>(())
    /// ```
    pub fn child_grace(mut self, grace: Duration) -> Self {
        self.child_grace = grace;
        self
    }

    /// Where to send systemd notifications (default: `NOTIFY_SOCKET` as it
    /// was when [`new`](Self::new) ran; `None`: send nothing).
    pub fn notifier(mut self, notifier: Option<Notifier>) -> Self {
        self.notifier = notifier;
        self
    }

    /// The systemd watchdog interval (default: `WATCHDOG_USEC` as it was
    /// when [`new`](Self::new) ran, for this process; `None`: no pings).
    ///
    /// The parent is the unit's main process, so it pings, at half of the
    /// interval, but only after the serving child answered a `status`
    /// request on its control endpoint (within 1 s, or a quarter of
    /// `interval` when that is shorter, so that the reason is logged before
    /// systemd acts): a child that hangs withholds the pings and systemd's
    /// `WatchdogSec=` fires. That needs a
    /// [`control_socket`](Self::control_socket) (the children's endpoints
    /// sit beside it); without one the pings prove the parent's loop only,
    /// as [`SupervisorEvent::WatchdogStarted`] reports. Pings need a
    /// notifier.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use lifecycle_handoff::UpgradeSupervisor;
    /// let supervisor = UpgradeSupervisor::new()?.watchdog(Some(Duration::from_secs(30)));
    /// # Ok::<(), lifecycle_handoff::Error>(())
    /// ```
    pub fn watchdog(mut self, interval: Option<Duration>) -> Self {
        self.watchdog = interval;
        self
    }

    /// Starts upgrade candidates with their nice value `increment` above
    /// this process's, and sets every thread of a candidate back once it
    /// reports ready (default 0: off; 10 is a good value).
    ///
    /// A process start runs a few milliseconds of CPU without yielding;
    /// on a machine with few cores the serving generation and its clients
    /// wait behind it, which shows as connections greeted milliseconds
    /// late during an upgrade. At a lower priority the start yields to
    /// them. The price: under full load the new generation starts more
    /// slowly; a candidate still not ready after one second at the lower
    /// priority gets the normal one back
    /// ([`SupervisorEvent::StartPriorityLifted`]), so a busy machine
    /// delays an upgrade by that second at most. The first child starts at
    /// the normal priority (nothing serves yet). Setting the threads back needs
    /// `CAP_SYS_NICE` (root has it): without it candidates start at the
    /// normal priority, as [`SupervisorEvent::StartNicenessOff`] reports.
    /// It also needs the child's `/proc/<pid>/task` (systemd's
    /// `ProtectProc=invisible` hides another user's processes): when the
    /// threads cannot be set back, [`SupervisorEvent::PriorityRestored`]
    /// carries the error and the generation serves at the lower priority.
    ///
    /// ```no_run
    /// # use lifecycle_handoff::UpgradeSupervisor;
    /// let supervisor = UpgradeSupervisor::new()?.start_niceness(10);
    /// # Ok::<(), lifecycle_handoff::Error>(())
    /// ```
    pub fn start_niceness(mut self, increment: i32) -> Self {
        self.start_niceness = increment.clamp(0, 39);
        self
    }

    /// Starts upgrade candidates under the `SCHED_IDLE` scheduling policy
    /// and sets every thread of a candidate back to this process's policy
    /// once it reports ready (default: off). Combine with
    /// [`start_niceness`](Self::start_niceness), whose conditions it shares
    /// (`CAP_SYS_NICE`, the child's `/proc/<pid>/task`).
    ///
    /// A raised nice value only lowers the start-up's share of the CPU: it
    /// still runs until the scheduler's next decision. Under `SCHED_IDLE`
    /// a waking thread of a normal policy (the serving generation, its
    /// clients) preempts the start-up at once. The price is larger than
    /// with a nice value: while the machine is busy the start-up gets
    /// almost no CPU; after one second without a ready report the
    /// candidate gets the normal priority back
    /// ([`SupervisorEvent::StartPriorityLifted`]), so on a saturated
    /// machine an upgrade takes about a second longer, not its whole
    /// [`ready_timeout`](Self::ready_timeout).
    ///
    /// The supervisor's own share of an upgrade (reading and answering
    /// control requests, re-opening the secret files, binding the
    /// candidate's control endpoint, the spawn, the promote, the events)
    /// runs under `SCHED_IDLE` too: every wake-up of its loop that serves
    /// a control request or the candidate's ready report, and the start
    /// on a signal, after which its thread is set back. That is a few
    /// hundred microseconds of CPU that a serving thread waking on the same
    /// CPU would otherwise wait behind. A `status` relay thread started
    /// meanwhile runs at that priority too. Wake-ups for signals and
    /// deadlines alone (a stop to forward, a starved candidate's priority
    /// to lift, an overdue child to kill, a watchdog probe) keep the
    /// normal priority.
    /// While a starting child has not executed yet (vfork semantics, see
    /// [`ChildSpawner`](crate::ChildSpawner)), the supervisor waits for it
    /// at that priority: on a busy machine its loop (signals, control
    /// requests) answers some milliseconds later during that time.
    ///
    /// ```no_run
    /// # use lifecycle_handoff::UpgradeSupervisor;
    /// let supervisor = UpgradeSupervisor::new()?.start_niceness(10).start_idle(true);
    /// # Ok::<(), lifecycle_handoff::Error>(())
    /// ```
    pub fn start_idle(mut self, on: bool) -> Self {
        self.start_idle = on;
        self
    }

    /// Serves the operator's control socket from the loop (default: none):
    /// `status`, `upgrade` (with `wait`, answered with the upgrade's
    /// result; concurrent callers share one upgrade and its answer) and
    /// `stop` (as SIGTERM). See [`ControlSocket`]. The socket is removed
    /// when `run` returns.
    pub fn control_socket(mut self, socket: Option<ControlSocket>) -> Self {
        self.control = socket;
        self
    }

    /// Starts generation 1 from `spawner` with everything in `inventory`
    /// and supervises until the serving child exits; returns its exit code
    /// (128 + signal for a signal death). `on_event` hears everything that
    /// happens. Call from the main thread (the children's parent-death
    /// signal follows the spawning thread).
    pub fn run(
        mut self,
        spawner: ChildSpawner,
        inventory: Inventory,
        on_event: impl FnMut(&SupervisorEvent),
    ) -> Result<i32> {
        let spawner = spawner
            .env_remove(NOTIFY_SOCKET)
            .env_remove(WATCHDOG_USEC)
            .env_remove(WATCHDOG_PID);
        let control = self.control.take().map(ControlServer::new);
        let mut state = Loop {
            supervisor: &self,
            spawner,
            inventory,
            paths: Vec::new(),
            on_event,
            serving: None,
            candidate: None,
            draining: Vec::new(),
            retiring: Vec::new(),
            pending: None,
            stopping: false,
            next_generation: 1,
            stats: UpgradeStats::default(),
            control,
            waiters: Vec::new(),
            last_upgrade: None,
            draining_since: Vec::new(),
            relays: relay::Relays::default(),
            watchdog: None,
            start_niceness: 0,
            start_idle: false,
            normal: priority::Policy::own()
                .ok()
                .map(|policy| (policy, crate::spawn::own_nice())),
        };
        if self.start_niceness > 0 || self.start_idle {
            match priority::cannot_restore() {
                None => {
                    state.start_niceness = self.start_niceness;
                    state.start_idle = self.start_idle;
                }
                Some(reason) => state.emit(SupervisorEvent::StartNicenessOff { reason }),
            }
        }
        if let (Some(interval), Some(_)) = (self.watchdog, &self.notifier) {
            state.watchdog = Some(watchdog::Watchdog::new(interval));
            state.emit(SupervisorEvent::WatchdogStarted {
                interval,
                child_checked: state.control.is_some(),
            });
        }
        state.start_first()?;
        state.run()
    }
}

impl Drop for UpgradeSupervisor {
    fn drop(&mut self) {
        // Restoring the mask cannot meaningfully fail; nothing to report.
        let _ =
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.previous), None);
    }
}
