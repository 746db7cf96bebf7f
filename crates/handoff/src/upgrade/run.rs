//! The supervision loop: one `poll` over the signalfd and the candidate's
//! readiness channel, and the state that decides what each event means.

use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::child::{Candidate, Generation, Retiring};
use super::priority;
use super::relay::{Endpoint, Relays, CHILD_CONTROL_NAME};
use super::watchdog::Watchdog;
use super::{SupervisorEvent, UpgradeFailure, UpgradeStats, UpgradeSupervisor};
use crate::bind::open_file;
use crate::control::server::{ClientId, ControlServer};
use crate::control::{ControlAccess, ControlSocket};
use crate::error::{Error, Result};
use crate::inventory::{Inventory, PassedFile, PassedListener};
use crate::lineage::Lineage;
use crate::notify::{monotonic_now, one_line, NotifyState};
use crate::ready::{poll_readable, ReadyPair};
use crate::spawn::ChildSpawner;
use crate::spec::ListenerSpec;

/// How long an upgrade candidate runs at its lower start priority at most:
/// a start-up takes milliseconds (see BENCHMARKS.md), so one still not
/// ready after this is starved by a busy machine and gets the normal
/// priority back ([`SupervisorEvent::StartPriorityLifted`]).
pub(crate) const START_PRIORITY_LIMIT: Duration = Duration::from_secs(1);

/// The supervision state.
pub(super) struct Loop<'a, F> {
    pub(super) supervisor: &'a UpgradeSupervisor,
    pub(super) spawner: ChildSpawner,
    /// The listeners (kept for the whole life) and, until the first child
    /// runs, the files.
    pub(super) inventory: Inventory,
    /// The files' paths, re-opened for every upgrade.
    pub(super) paths: Vec<PathBuf>,
    pub(super) on_event: F,
    pub(super) serving: Option<Generation>,
    pub(super) candidate: Option<Candidate>,
    pub(super) draining: Vec<Generation>,
    /// New children told to stop that never served as the main child;
    /// killed if still running at their deadline.
    pub(super) retiring: Vec<Retiring>,
    pub(super) pending: Option<&'static str>,
    pub(super) stopping: bool,
    pub(super) next_generation: u64,
    pub(super) stats: UpgradeStats,
    /// The control socket, when configured.
    pub(super) control: Option<ControlServer>,
    /// Control clients waiting for the running upgrade's result.
    pub(super) waiters: Vec<ClientId>,
    /// The last upgrade's outcome, for `status`.
    pub(super) last_upgrade: Option<serde_json::Value>,
    /// When each draining generation began to drain (unix seconds).
    pub(super) draining_since: Vec<(u64, u64)>,
    /// `status` and `connections` relays to the children in flight.
    pub(super) relays: Relays,
    /// systemd's watchdog, when `WATCHDOG_USEC` asks for one.
    pub(super) watchdog: Option<Watchdog>,
    /// How much lower upgrade candidates start (0: not at all; set only
    /// when this process can restore their priority).
    pub(super) start_niceness: i32,
    /// Whether candidates start under `SCHED_IDLE` (both off when the
    /// priority could not be set back).
    pub(super) start_idle: bool,
    /// This thread's policy and nice value when the loop began: what
    /// candidates are set back to (the thread itself is under
    /// `SCHED_IDLE` for parts of an upgrade; `None`: not readable, the
    /// thread's policy at the time is used).
    pub(super) normal: Option<(priority::Policy, i32)>,
}

impl<F: FnMut(&SupervisorEvent)> Loop<'_, F> {
    pub(super) fn emit(&mut self, event: SupervisorEvent) {
        (self.on_event)(&event);
    }

    pub(super) fn notify(&mut self, states: &[NotifyState<'_>]) {
        let Some(notifier) = &self.supervisor.notifier else {
            return;
        };
        if let Err(err) = notifier.notify(states) {
            let message = states.first().map(ToString::to_string).unwrap_or_default();
            self.emit(SupervisorEvent::NotifyFailed {
                message,
                error: err.to_string(),
            });
        }
    }

    pub(super) fn lineage(&self, generation: u64) -> Lineage {
        Lineage {
            generation,
            upgrades_ok: self.stats.succeeded,
            upgrades_failed: self.stats.failed,
        }
    }

    /// The control endpoint of generation `number` (with a control
    /// socket only): bound here, root's, mode 0600, passed to the child as
    /// [`CHILD_CONTROL_NAME`]; `None` (no relay for it) when it cannot be
    /// bound.
    fn child_endpoint(&self, number: u64) -> Option<(Endpoint, PassedListener)> {
        let control = self.control.as_ref()?;
        let path = Endpoint::path_for(control.path(), number);
        let mut socket = ControlSocket::bind(&path, ControlAccess::owner_only()).ok()?;
        let fd = socket.listener().try_clone().ok()?;
        socket.keep_path();
        let passed = PassedListener {
            spec: ListenerSpec::unix(CHILD_CONTROL_NAME, &path),
            fd: fd.into(),
        };
        Some((Endpoint { path }, passed))
    }

    /// Starts `inventory` (and a control endpoint of its own) as
    /// generation `number` with a readiness channel.
    fn spawn(&mut self, number: u64, inventory: &mut Inventory) -> Result<Candidate> {
        let pair = ReadyPair::new()?;
        let (endpoint, passed) = self.child_endpoint(number).unzip();
        let extra = passed.is_some();
        inventory.listeners.extend(passed);
        // Candidates start at a lower priority; the first child does not
        // (nothing serves yet to yield to).
        let niced = number > 1 && (self.start_niceness > 0 || self.start_idle);
        let child = if niced {
            (self.spawner.clone())
                .niceness(self.start_niceness)
                .idle_scheduling(self.start_idle)
                .spawn_with_ready(inventory, &pair, self.lineage(number))
        } else {
            self.spawner
                .spawn_with_ready(inventory, &pair, self.lineage(number))
        };
        if extra {
            // The parent's copy: the child has its own.
            inventory.listeners.pop();
        }
        let child = child?;
        let receiver = pair.into_receiver();
        let generation = Generation {
            number,
            child,
            channel: None,
            endpoint,
        };
        self.emit(SupervisorEvent::Started {
            generation: number,
            pid: generation.pid(),
        });
        Ok(Candidate {
            generation,
            receiver,
            deadline: Instant::now() + self.supervisor.ready_timeout,
            settled: false,
            told_to_stop: false,
            niced,
            lift_at: niced.then(|| Instant::now() + START_PRIORITY_LIMIT),
        })
    }

    pub(super) fn start_first(&mut self) -> Result<()> {
        self.paths = self
            .inventory
            .files
            .iter()
            .map(|f| f.path.clone())
            .collect();
        let mut inventory = std::mem::take(&mut self.inventory);
        let started = self.spawn(1, &mut inventory);
        self.inventory = inventory;
        // The child has its copies of the secrets (or failed to start).
        self.inventory.close_files();
        self.next_generation = 2;
        self.candidate = Some(started?);
        Ok(())
    }

    pub(super) fn run(&mut self) -> Result<i32> {
        loop {
            let next = (self.candidate.iter().map(|c| c.deadline))
                .chain(self.candidate.iter().filter_map(|c| c.lift_at))
                .chain(self.retiring.iter().map(|r| r.kill_at))
                .chain(self.control.as_ref().and_then(ControlServer::next_deadline))
                .chain(
                    (self.watchdog.as_ref())
                        .filter(|_| !self.stopping)
                        .map(Watchdog::deadline),
                )
                .min();
            let timeout = next.map(|at| at.saturating_duration_since(Instant::now()));
            // Indexes: 0 the signalfd, 1 the candidate's channel (when
            // polled), then the control socket's descriptors.
            let (readable, control_base) = {
                let mut fds = vec![self.supervisor.signals.as_fd()];
                if let Some(candidate) = self.candidate.as_ref().filter(|c| !c.settled) {
                    fds.push(candidate.receiver.as_fd());
                } else {
                    // A placeholder that is never readable keeps the indexes.
                    fds.push(self.supervisor.signals.as_fd());
                }
                let base = fds.len();
                if let Some(control) = &self.control {
                    fds.extend(control.fds());
                }
                let readable = poll_readable(&fds, timeout).map_err(|source| Error::Supervise {
                    pid: 0,
                    operation: "poll",
                    source,
                })?;
                (readable, base)
            };
            let control: Vec<usize> = (readable.iter())
                .filter_map(|&i| i.checked_sub(control_base))
                .collect();
            // A control request or the candidate's report: the rest of
            // this wake-up yields to the serving generation. Signals and
            // deadlines alone keep the normal priority (a stop is
            // forwarded, a starved candidate's priority lifted, an overdue
            // child killed, a watchdog probe started without waiting for
            // a share of a busy machine); before the first child serves
            // there is nothing to yield to.
            let reported =
                readable.contains(&1) && self.candidate.as_ref().is_some_and(|c| !c.settled);
            let idle = priority::IdleWhile::enter(
                self.start_idle && self.serving.is_some() && (!control.is_empty() || reported),
            );
            let signalled = readable.contains(&0);
            if let Some(code) = self.serve_wake_up(reported, signalled, &control)? {
                return Ok(code);
            }
            self.leave_idle(idle);
            self.tick_watchdog();
        }
    }

    /// Handles what one wake-up of the loop found: the candidate's
    /// channel readable (`reported`), signals (`signalled`), the control
    /// socket's readable descriptors (`control`), and the deadlines; the
    /// exit code once the serving child is gone.
    fn serve_wake_up(
        &mut self,
        reported: bool,
        signalled: bool,
        control: &[usize],
    ) -> Result<Option<i32>> {
        if reported {
            if let Some(code) = self.check_candidate()? {
                return Ok(Some(code));
            }
        }
        if signalled {
            if let Some(code) = self.read_signals()? {
                return Ok(Some(code));
            }
        }
        self.serve_control(control)?;
        if let Some(code) = self.check_deadline()? {
            return Ok(Some(code));
        }
        self.lift_start_priority();
        self.kill_overdue()?;
        Ok(None)
    }

    /// Restores a candidate's priority once it has started at the lower
    /// one for [`START_PRIORITY_LIMIT`] without becoming ready: on a busy
    /// machine a start-up under `SCHED_IDLE` gets almost no CPU, and the
    /// upgrade must still finish within the ready timeout.
    fn lift_start_priority(&mut self) {
        let Some(candidate) = self.candidate.as_mut() else {
            return;
        };
        if candidate.lift_at.is_none_or(|at| at > Instant::now()) {
            return;
        }
        candidate.lift_at = None;
        candidate.niced = false;
        let (generation, pid) = (candidate.generation.number, candidate.generation.pid());
        let (threads, error) = match priority::restore(pid, self.normal) {
            Ok(threads) => (threads, None),
            Err(e) => (0, Some(e.to_string())),
        };
        self.emit(SupervisorEvent::StartPriorityLifted {
            generation,
            pid,
            after: START_PRIORITY_LIMIT,
            threads,
            error,
        });
    }

    /// Collects watchdog probes and starts the next one when due. Not
    /// once stopping: systemd no longer watches, and a draining child may
    /// have closed its endpoint.
    fn tick_watchdog(&mut self) {
        if self.stopping {
            return;
        }
        let Some(mut watchdog) = self.watchdog.take() else {
            return;
        };
        let serving = (self.serving.as_ref())
            .map(|g| (g.number, g.endpoint.as_ref().map(|e| e.path.clone())));
        let mut events = Vec::new();
        watchdog.tick(self.supervisor.notifier.as_ref(), serving, |e| {
            events.push(e)
        });
        self.watchdog = Some(watchdog);
        for event in events {
            self.emit(event);
        }
    }

    fn read_signals(&mut self) -> Result<Option<i32>> {
        loop {
            let info = self
                .supervisor
                .signals
                .read_signal()
                .map_err(|errno| Error::Supervise {
                    pid: 0,
                    operation: "read(signalfd)",
                    source: io::Error::from(errno),
                })?;
            let Some(info) = info else {
                return Ok(None);
            };
            let signal = i32::try_from(info.ssi_signo)
                .ok()
                .and_then(|n| Signal::try_from(n).ok());
            let code = match signal {
                Some(Signal::SIGCHLD) => self.reap()?,
                Some(signal @ (Signal::SIGHUP | Signal::SIGUSR2)) => {
                    self.upgrade_requested(signal.as_str())?;
                    None
                }
                Some(signal @ (Signal::SIGTERM | Signal::SIGINT)) => {
                    self.stop(signal);
                    None
                }
                _ => None,
            };
            if code.is_some() {
                return Ok(code);
            }
        }
    }

    pub(super) fn stop(&mut self, signal: Signal) {
        if !self.stopping {
            self.stopping = true;
            self.pending = None;
            let status = format!("stopping ({})", signal.as_str());
            self.notify(&[NotifyState::Stopping, NotifyState::Status(&status)]);
        }
        let mut generations = Vec::new();
        if let Some(serving) = &self.serving {
            serving.signal(signal);
            generations.push(serving.number);
        }
        if let Some(candidate) = &mut self.candidate {
            candidate.generation.signal(signal);
            candidate.told_to_stop = true;
            generations.push(candidate.generation.number);
        }
        self.emit(SupervisorEvent::Forwarded {
            signal: signal.as_str(),
            generations,
        });
    }

    fn upgrade_requested(&mut self, signal: &'static str) -> Result<()> {
        if self.stopping {
            self.emit(SupervisorEvent::UpgradeIgnored {
                signal,
                reason: "the service is stopping",
            });
            return Ok(());
        }
        if let Some(candidate) = &self.candidate {
            let starting = candidate.generation.number;
            if self.pending.is_some() {
                self.emit(SupervisorEvent::UpgradeIgnored {
                    signal,
                    reason: "an upgrade is running and another one already waits",
                });
            } else {
                self.pending = Some(signal);
                self.emit(SupervisorEvent::UpgradeQueued { signal, starting });
            }
            return Ok(());
        }
        self.start_upgrade(signal)
    }

    /// Starts the next generation: [`start_candidate`](Self::start_candidate)
    /// done under `SCHED_IDLE` when candidates start so (see
    /// [`IdleWhile`](priority::IdleWhile)).
    pub(super) fn start_upgrade(&mut self, signal: &'static str) -> Result<()> {
        let idle = priority::IdleWhile::enter(self.start_idle);
        let started = self.start_candidate(signal);
        self.leave_idle(idle);
        started
    }

    /// Sets this thread back after its share of an upgrade; reports a
    /// failure (the parent would otherwise stay under `SCHED_IDLE`).
    pub(super) fn leave_idle(&mut self, idle: priority::IdleWhile) {
        if let Err(e) = idle.leave() {
            self.emit(SupervisorEvent::OwnPriorityNotRestored {
                error: e.to_string(),
            });
        }
    }

    fn start_candidate(&mut self, signal: &'static str) -> Result<()> {
        let from = self.serving.as_ref().map_or(0, |g| g.number);
        let to = self.next_generation;
        self.next_generation += 1;
        self.emit(SupervisorEvent::UpgradeStarted { from, to, signal });
        let status = format!("upgrading from generation {from} to {to}");
        self.notify(&[
            NotifyState::Reloading,
            monotonic_now(),
            NotifyState::Status(&status),
        ]);
        let mut files = Vec::with_capacity(self.paths.len());
        for path in &self.paths {
            match open_file(path) {
                Ok(file) => files.push(PassedFile {
                    path: path.clone(),
                    fd: file.into(),
                }),
                Err(err) => {
                    let failure = UpgradeFailure::Reopen {
                        path: path.clone(),
                        error: err.to_string(),
                    };
                    self.upgrade_failed(from, to, failure);
                    return self.run_pending();
                }
            }
        }
        let mut inventory = Inventory {
            listeners: std::mem::take(&mut self.inventory.listeners),
            files,
        };
        let started = self.spawn(to, &mut inventory);
        self.inventory.listeners = std::mem::take(&mut inventory.listeners);
        drop(inventory); // the re-opened copies: the child has its own
        match started {
            Ok(candidate) => self.candidate = Some(candidate),
            Err(err) => {
                let failure = UpgradeFailure::Spawn {
                    error: err.to_string(),
                };
                self.upgrade_failed(from, to, failure);
                return self.run_pending();
            }
        }
        Ok(())
    }

    pub(super) fn run_pending(&mut self) -> Result<()> {
        match self.pending.take() {
            Some(signal) if !self.stopping => self.start_upgrade(signal),
            _ => Ok(()),
        }
    }

    /// Sends the serving child the current counters (for its metrics).
    pub(super) fn send_update(&self) {
        let Some(serving) = &self.serving else {
            return;
        };
        if let Some(channel) = &serving.channel {
            // A child that does not read loses the update; nothing to do.
            let _ = channel.send_update(&Lineage {
                generation: serving.number,
                upgrades_ok: self.stats.succeeded,
                upgrades_failed: self.stats.failed,
            });
        }
    }

    pub(super) fn upgrade_failed(&mut self, from: u64, to: u64, failure: UpgradeFailure) {
        self.stats.failed += 1;
        self.send_update();
        self.upgrade_settled(from, to, None, Some(&failure));
        let status = one_line(&format!(
            "upgrade failed: {failure}; serving generation {from}"
        ));
        self.emit(SupervisorEvent::UpgradeFailed {
            from,
            to,
            failure,
            stats: self.stats,
        });
        if !self.stopping {
            self.notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
        }
    }
}
