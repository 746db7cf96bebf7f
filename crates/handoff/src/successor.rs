//! Handing the listeners to a successor of this process, without a
//! privileged parent (socket-activated or `CAP_NET_BIND_SERVICE` setups):
//! the running process plays the parent's part once.
//!
//! The sequence, started by the running process (for example on SIGHUP):
//!
//! 1. `RELOADING=1` to systemd (with `NOTIFY_SOCKET`);
//! 2. spawn this program (the path on disk) with duplicates of its
//!    listeners (and files, if any) by the hand-off protocol, a readiness
//!    channel, and the next [`Lineage`];
//! 3. wait until the successor reports ready (default 30 s);
//! 4. `READY=1` and `STATUS=` to systemd (the reload is over), but **no**
//!    `MAINPID=`: the successor announces itself with `MAINPID=<own pid>`
//!    once this process has exited (see below);
//! 5. the caller drains and exits as on SIGTERM (it must not send
//!    `STOPPING=1`: the successor serves, and it would speak for the whole
//!    service).
//!
//! # Why the successor names itself, and only after its predecessor exited
//!
//! systemd can only wait for its own children. Told `MAINPID=` of a
//! process that is not its child (the successor, while its parent — this
//! process — lives), it logs `Supervising process N which is not our
//! child` and marks the main process *alien* for as long as it stays the
//! main process, even after the successor is re-parented to it. On
//! `systemctl stop` it then sends SIGTERM and does not wait for an alien
//! main process: unless other processes are left in the control group, it
//! goes straight on to SIGKILL (`Result=signal`, `ExecMainStatus=9`) while
//! the successor is still finishing its drain. Once this process has
//! exited, the successor *is* systemd's child; a `MAINPID=` sent then is
//! supervised like the original main process. The unit needs
//! `ExitType=cgroup` (the service lives on while the predecessor's exit
//! leaves the successor in the control group) and `NotifyAccess=all` (the
//! successor is not the main process when it sends `MAINPID=`).
//!
//! If the successor fails (exits, closes its channel, times out) it is
//! killed and reaped, `READY=1` and `STATUS=upgrade failed: ...` go to
//! systemd, and the caller keeps serving.
//!
//! # Why the successor survives its parent
//!
//! The successor's parent is the old process, which exits after draining.
//! So the successor is started **without** `PR_SET_PDEATHSIG` (a privileged
//! parent's child gets it; here it would kill the successor when the old
//! process exits). The `<PREFIX>_PARENT_PID` guard stays as it is: it names
//! the old process, which is alive while the successor reads the variables
//! (the old process waits for the ready message, sent after the hand-off
//! was taken). If the old process dies first, the successor is re-parented,
//! its `getppid()` no longer matches, and it refuses the hand-off
//! ([`Error::WrongParent`]) instead of guessing. The successor keeps
//! `NOTIFY_SOCKET` and `WATCHDOG_USEC` (it becomes the main process) but
//! not `WATCHDOG_PID`, which names the old process.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::child_process::ChildProcess;
use crate::error::{Error, Result};
use crate::inventory::Inventory;
use crate::lineage::Lineage;
use crate::notify::{monotonic_now, one_line, Notifier, NotifyState, WATCHDOG_PID};
use crate::ready::{ReadyPair, ReadyReceiver, ReadyState};
use crate::spawn::ChildSpawner;
use crate::supervise::exit_code;
use crate::upgrade::DEFAULT_READY_TIMEOUT;

/// Starts a successor of this process and waits until it is ready (a
/// consuming builder).
///
/// Blocking: call it from a thread that may block (not an async task).
///
/// ```no_run
/// use lifecycle_handoff::{ChildSpawner, Handoff, SuccessorHandoff};
///
/// # fn main() -> Result<(), lifecycle_handoff::Error> {
/// # let handoff = Handoff::detect("LIFECYCLE")?;
/// // At start-up: the lineage this process got (None when it is the first).
/// let lineage = handoff.lineage();
/// # let listeners = lifecycle_handoff::Inventory::default();
/// // Later, on SIGHUP, with duplicates of the listeners it serves:
/// match SuccessorHandoff::new(ChildSpawner::new()?).lineage(lineage).start(&listeners) {
///     Ok(successor) => eprintln!("generation {} (pid {}) took over; draining",
///                                successor.generation(), successor.pid()),
///     Err(err) => eprintln!("upgrade failed, still serving: {err}"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct SuccessorHandoff {
    spawner: ChildSpawner,
    ready_timeout: Duration,
    notifier: Option<Notifier>,
    lineage: Lineage,
    cancel: Option<Arc<AtomicBool>>,
}

/// How often a cancellable [`SuccessorHandoff::start`] looks at its flag.
const CANCEL_CHECK: Duration = Duration::from_millis(50);

impl SuccessorHandoff {
    /// A hand-off that starts `spawner`'s program (this executable, by
    /// default) without a parent-death signal and without `WATCHDOG_PID`.
    /// Notifications go to `NOTIFY_SOCKET` as it is now (a bad value
    /// disables them; use [`notifier`](Self::notifier) to set one).
    pub fn new(spawner: ChildSpawner) -> Self {
        SuccessorHandoff {
            spawner: spawner.parent_death_signal(false).env_remove(WATCHDOG_PID),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            notifier: Notifier::from_env().ok().flatten(),
            lineage: Lineage {
                generation: 2,
                upgrades_ok: 0,
                upgrades_failed: 0,
            },
            cancel: None,
        }
    }

    /// How long the successor may take to report ready (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Where to send systemd notifications (`None`: nowhere).
    pub fn notifier(mut self, notifier: Option<Notifier>) -> Self {
        self.notifier = notifier;
        self
    }

    /// This process's own lineage ([`Handoff::lineage`](crate::Handoff::lineage));
    /// the successor gets the next generation and counters that include
    /// this process's own start. `None` (the first process): generation 2.
    pub fn lineage(mut self, current: Option<Lineage>) -> Self {
        let current = current.unwrap_or(Lineage::FIRST);
        self.lineage = Lineage {
            generation: current.generation.saturating_add(1),
            upgrades_ok: current.succeeded_including_self(),
            upgrades_failed: current.upgrades_failed,
        };
        self
    }

    /// Makes [`start`](Self::start) give up when `flag` becomes true while
    /// it waits for the successor (checked every 50 ms): the successor is
    /// killed and `start` fails with [`Error::NotReady`] ("cancelled"), so a
    /// stop that arrives during a hand-over stays a stop.
    ///
    /// ```
    /// use std::sync::{atomic::AtomicBool, Arc};
    /// use lifecycle_handoff::{ChildSpawner, SuccessorHandoff};
    ///
    /// let stop = Arc::new(AtomicBool::new(false));
    /// let handoff = SuccessorHandoff::new(ChildSpawner::new()?).cancel_on(Arc::clone(&stop));
    /// # drop(handoff);
    /// # Ok::<(), lifecycle_handoff::Error>(())
    /// ```
    pub fn cancel_on(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    /// The lineage the successor will get.
    pub fn successor_lineage(&self) -> Lineage {
        self.lineage
    }

    /// Starts the successor with `inventory` (duplicates of the listeners
    /// this process serves, and files if any) and waits until it is ready.
    /// On success the caller should drain and exit; on failure the
    /// successor is gone and the caller keeps serving.
    pub fn start(self, inventory: &Inventory) -> Result<Successor> {
        let generation = self.lineage.generation;
        let from = generation.saturating_sub(1);
        let status = format!("handing over to generation {generation}");
        self.notify(&[
            NotifyState::Reloading,
            monotonic_now(),
            NotifyState::Status(&status),
        ]);
        let pair = ReadyPair::new()?;
        let child = self
            .spawner
            .spawn_with_ready(inventory, &pair, self.lineage);
        let mut receiver = pair.into_receiver();
        let mut child = match child {
            Ok(child) => child,
            Err(err) => {
                self.failed(from, &err.to_string());
                return Err(err);
            }
        };
        let pid = child.id();
        let state = self.wait_ready(&mut receiver);
        let reason = match state {
            Ok(ReadyState::Ready) => None,
            Ok(ReadyState::Pending) if self.is_cancelled() => {
                Some("cancelled: this process is stopping".to_owned())
            }
            Ok(ReadyState::Pending) => Some(format!("not ready within {:?}", self.ready_timeout)),
            Ok(ReadyState::Closed) => Some("closed its readiness channel".to_owned()),
            Err(ref err) => Some(err.to_string()),
        };
        let closed = matches!(state, Ok(ReadyState::Closed));
        if let Some(reason) = reason {
            let exited = if self.is_cancelled() {
                let _ = child.kill();
                let _ = child.wait();
                None
            } else {
                reap(&mut child)
            };
            let reason = match exited {
                Some(code) if closed => {
                    format!("exited with code {code} before it was ready")
                }
                _ => reason,
            };
            self.failed(from, &reason);
            return Err(Error::NotReady {
                generation,
                pid,
                reason,
            });
        }
        let status =
            format!("generation {generation} (pid {pid}) took over from generation {from}");
        // No MAINPID=: the successor names itself once this process exited
        // (see the module documentation).
        self.notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        Ok(Successor { child, generation })
    }

    fn is_cancelled(&self) -> bool {
        (self.cancel.as_ref()).is_some_and(|c| c.load(Ordering::SeqCst))
    }

    /// Waits for the successor's ready message until the ready timeout,
    /// looking at the cancel flag every [`CANCEL_CHECK`].
    fn wait_ready(&self, receiver: &mut ReadyReceiver) -> Result<ReadyState> {
        let deadline = Instant::now() + self.ready_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let slice = match self.cancel {
                Some(_) => left.min(CANCEL_CHECK),
                None => left,
            };
            let state = receiver.wait(slice)?;
            if state != ReadyState::Pending || left <= slice || self.is_cancelled() {
                return Ok(state);
            }
        }
    }

    fn notify(&self, states: &[NotifyState<'_>]) {
        if let Some(notifier) = &self.notifier {
            // Best effort: the hand-off does not depend on systemd hearing it.
            let _ = notifier.notify(states);
        }
    }

    fn failed(&self, from: u64, reason: &str) {
        let status = one_line(&format!(
            "upgrade failed: {reason}; generation {from} keeps serving"
        ));
        self.notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }
}

/// Gives a failed successor a moment to exit on its own, then kills it;
/// returns its exit code when it exited by itself.
fn reap(child: &mut ChildProcess) -> Option<i32> {
    for _ in 0..100 {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(exit_code(status));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A successor that reported ready: it serves now.
#[derive(Debug)]
pub struct Successor {
    child: ChildProcess,
    generation: u64,
}

impl Successor {
    /// Its pid (what it tells systemd with `MAINPID=` once this process
    /// exited).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The process handle (the successor outlives this process; dropping
    /// the handle neither kills nor waits for it).
    pub fn into_child(self) -> ChildProcess {
        self.child
    }
}
