//! Upgrades without a privileged parent (socket-activated or
//! `CAP_NET_BIND_SERVICE` setups): on SIGHUP the serving process starts a
//! successor of the binary on disk with duplicates of its listeners and
//! freshly opened TLS files (`lifecycle_handoff::SuccessorHandoff`), waits
//! until it is ready, tells systemd `READY=1`, goes silent, then drains for
//! an upgrade and exits. The successor tells systemd `MAINPID=<its pid>`
//! once this process has exited ([`announce_main_pid_after_parent`]): only
//! then is it systemd's own child, which systemd waits for on a stop. If the successor fails, this process serves on and
//! counts the failure. SIGUSR2 does the same. Under a privileged parent
//! both are the parent's business: a child that gets one logs it and goes
//! on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::Addr;
use actix_lifecycle::{
    BeginShutdown, HandedOver, SendMainPid, ShutdownCoordinator, SystemdNotifier,
};
use actix_rt::signal::unix::{signal, SignalKind};
use lifecycle_handoff::{
    error_reply, open_file, upgrade_reply, ChildSpawner, HeldSignals, Inventory, Lineage,
    PassedFile, PassedListener, Successor, SuccessorHandoff, CONTROL_PROTOCOL_VERSION,
};
use serde_json::{json, Value};
use slog::{error, info, warn, Logger};
use tokio::sync::mpsc;

use crate::control::{UpgradeDesk, UpgradeRequest};
use crate::upgrade::{UpgradeDrain, UpgradeMetrics};

/// What a successor needs: duplicates of the listeners this process serves
/// and the paths of the files to open afresh for it (the TLS certificate and
/// key, in the order the service opens them).
#[derive(Debug)]
pub struct Handover {
    listeners: Vec<PassedListener>,
    files: Vec<PathBuf>,
    lineage: Option<Lineage>,
    control: Option<PassedListener>,
}

impl Handover {
    /// Keeps duplicates of `inventory`'s listeners named in `names` (the
    /// originals go to the service; a socket no listener claims is not
    /// kept, so it closes) and `files` to re-open at each hand-over;
    /// `lineage` is this process's own (`None` for the first one).
    pub fn new(
        inventory: &Inventory,
        names: &[&str],
        files: Vec<PathBuf>,
        lineage: Option<Lineage>,
    ) -> std::io::Result<Self> {
        let listeners = inventory
            .listeners
            .iter()
            .filter(|l| names.contains(&l.spec.name()))
            .map(|l| {
                Ok(PassedListener {
                    spec: l.spec.clone(),
                    fd: l.fd.try_clone()?,
                })
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Handover {
            listeners,
            files,
            lineage,
            control: None,
        })
    }

    /// Also hands on the control socket (`control`, a duplicate of the one
    /// this process serves, named `CONTROL_LISTENER_NAME`): the successor
    /// serves the same socket.
    pub fn control(mut self, control: PassedListener) -> Self {
        self.control = Some(control);
        self
    }

    /// Starts the successor and waits until it is ready (blocking).
    /// `failed` earlier attempts of this process are passed on in its
    /// lineage.
    fn start(&self, failed: u64, cancel: &Arc<AtomicBool>) -> Result<Successor, HandoverError> {
        let mut inventory = Inventory::default();
        for l in self.listeners.iter().chain(&self.control) {
            let fd = l.fd.try_clone().map_err(|source| HandoverError::Dup {
                listener: l.spec.name().to_owned(),
                source,
            })?;
            inventory.listeners.push(PassedListener {
                spec: l.spec.clone(),
                fd,
            });
        }
        for path in &self.files {
            inventory.files.push(PassedFile {
                path: path.clone(),
                fd: open_file(path)?.into(),
            });
        }
        let mut lineage = self.lineage.unwrap_or(Lineage::FIRST);
        lineage.upgrades_failed += failed;
        Ok(SuccessorHandoff::new(ChildSpawner::new()?)
            .lineage(Some(lineage))
            .cancel_on(Arc::clone(cancel))
            .start(&inventory)?)
    }
}

/// Why a hand-over did not happen (this process serves on).
#[derive(Debug, thiserror::Error)]
enum HandoverError {
    /// A listening socket could not be duplicated for the successor.
    #[error("cannot duplicate the socket of listener {listener} for the successor (raise the open-files limit): {source}")]
    Dup {
        listener: String,
        #[source]
        source: std::io::Error,
    },
    /// Opening a file, starting the successor, or waiting for it failed.
    #[error(transparent)]
    Handoff(#[from] lifecycle_handoff::Error),
}

/// What the SIGHUP task needs from the running service.
pub(crate) struct HandoverTask {
    pub(crate) handover: Option<Arc<Handover>>,
    /// SIGHUP and SIGUSR2 as held since the start of `main`.
    pub(crate) held: Option<HeldSignals>,
    pub(crate) supervised: bool,
    pub(crate) coordinator: Addr<ShutdownCoordinator>,
    pub(crate) shutdown: actix_lifecycle::ShutdownHandle,
    pub(crate) notifier: Option<Addr<SystemdNotifier>>,
    pub(crate) drain: UpgradeDrain,
    pub(crate) metrics: UpgradeMetrics,
    pub(crate) generation: u64,
    /// `upgrade` requests from the control socket (none without one).
    pub(crate) requests: Option<mpsc::UnboundedReceiver<UpgradeRequest>>,
    /// Where hand-overs are reported, for the control socket.
    pub(crate) desk: Option<UpgradeDesk>,
    pub(crate) log: Logger,
}

/// What asked for a hand-over.
enum Trigger {
    Signal(&'static str),
    Control(UpgradeRequest),
}

impl Trigger {
    fn name(&self) -> &'static str {
        match self {
            Trigger::Signal(name) => name,
            Trigger::Control(_) => "control socket",
        }
    }
}

/// The next request, or never without a receiver.
async fn next_request(
    requests: &mut Option<mpsc::UnboundedReceiver<UpgradeRequest>>,
) -> Option<UpgradeRequest> {
    match requests {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

impl HandoverTask {
    /// Handles SIGHUP and SIGUSR2 for the life of the service (a signal that
    /// arrives during a hand-over waits for it: each signal stream keeps
    /// one). Call it in the runtime's thread, the one that held the signals
    /// in `main`: the handlers are installed now, then the held signals are
    /// released, so one that came during the start is handled now.
    pub(crate) fn spawn(mut self) {
        let streams = signal(SignalKind::hangup())
            .and_then(|hup| Ok((hup, signal(SignalKind::user_defined2())?)));
        let (mut hup, mut usr2) = match streams {
            Ok(s) => s,
            Err(e) => {
                // Held, they stay blocked: ignored rather than fatal.
                warn!(self.log, "cannot handle SIGHUP/SIGUSR2; upgrades are off and the signals stay blocked"; "error" => %e);
                return;
            }
        };
        if let Some(held) = self.held.take() {
            if let Err(e) = held.release() {
                warn!(self.log, "cannot release SIGHUP/SIGUSR2; they stay blocked and upgrades are off"; "error" => %e);
            }
        }
        actix::spawn(async move {
            let mut failed = 0;
            let mut requests = self.requests.take();
            loop {
                let trigger = tokio::select! {
                    s = hup.recv() => s.map(|()| Trigger::Signal("SIGHUP")),
                    s = usr2.recv() => s.map(|()| Trigger::Signal("SIGUSR2")),
                    r = next_request(&mut requests) => r.map(Trigger::Control),
                };
                let Some(trigger) = trigger else {
                    return;
                };
                let name = trigger.name();
                let refusal = match &self.handover {
                    None if self.supervised => {
                        info!(self.log, "upgrade signal ignored: the privileged parent upgrades the service (signal the parent)"; "signal" => name);
                        Some("the privileged parent upgrades the service; ask its control socket")
                    }
                    None => {
                        warn!(self.log, "upgrade signal ignored: the listeners could not be kept for a successor at start (see the warning then); restart to upgrade"; "signal" => name);
                        Some("the listeners could not be kept for a successor at start (see the log); restart to upgrade")
                    }
                    Some(_) if self.shutdown.is_shutting_down() => {
                        info!(self.log, "upgrade signal ignored: the service is stopping"; "signal" => name);
                        Some("the service is stopping")
                    }
                    Some(_) => None,
                };
                let waiter = match (trigger, refusal) {
                    (Trigger::Control(request), Some(refusal)) => {
                        let _ = request
                            .reply
                            .send(error_reply(&format!("upgrade refused: {refusal}")));
                        continue;
                    }
                    (Trigger::Signal(_), Some(_)) => continue,
                    (Trigger::Control(request), None) => Some(request),
                    (Trigger::Signal(_), None) => None,
                };
                let Some(handover) = &self.handover else {
                    continue;
                };
                let from = self.generation.max(1);
                if let Some(desk) = &self.desk {
                    desk.started(from + 1);
                }
                let waiter = match waiter {
                    Some(request) if !request.wait => {
                        let _ = request.reply.send(json!({"version": CONTROL_PROTOCOL_VERSION,
                            "ok": true, "started": true, "from": from, "to": from + 1, "pid": null}));
                        None
                    }
                    waiter => waiter,
                };
                let (done, reply) = self.hand_over(handover, name, &mut failed).await;
                if let Some(desk) = &self.desk {
                    desk.settled(&reply, done);
                }
                // This caller and every one that asked meanwhile: one
                // upgrade, one answer.
                let mut waiters: Vec<UpgradeRequest> = waiter.into_iter().collect();
                if let Some(requests) = &mut requests {
                    while let Ok(request) = requests.try_recv() {
                        waiters.push(request);
                    }
                }
                for request in waiters {
                    let _ = request.reply.send(reply.clone());
                }
                if done {
                    return;
                }
            }
        });
    }

    /// One hand-over; true when the successor serves and this process
    /// drains; with the answer for `upgrade --wait`.
    async fn hand_over(
        &self,
        handover: &Arc<Handover>,
        signal: &str,
        failed: &mut u64,
    ) -> (bool, Value) {
        let from = self.generation.max(1);
        info!(self.log, "upgrade started"; "from" => from, "to" => from + 1, "signal" => signal);
        let h = Arc::clone(handover);
        let attempts = *failed;
        // A stop (SIGTERM) during the hand-over cancels it: the successor
        // is killed and the blocking wait ends, so the stop stays a stop and
        // the runtime is not kept waiting for the blocking task.
        let cancel = Arc::new(AtomicBool::new(false));
        let cancelled = Arc::clone(&cancel);
        let log = self.log.clone();
        let mut task = tokio::task::spawn_blocking(move || {
            let started = h.start(attempts, &cancelled);
            // Logged here: an idle service stops before the task resumes.
            if let (Err(e), true) = (&started, cancelled.load(Ordering::SeqCst)) {
                warn!(log, "upgrade cancelled by a stop"; "from" => from, "to" => from + 1,
                    "reason" => %e, "detail" => format!("generation {from} stops; the successor was killed"));
            }
            started
        });
        let started = tokio::select! {
            started = &mut task => started,
            () = self.shutdown.shutting_down() => {
                cancel.store(true, Ordering::SeqCst);
                task.await
            }
        };
        let reason = match started {
            // Ready just as the stop began: pass the stop on to it.
            Ok(Ok(successor)) if self.shutdown.is_shutting_down() => {
                let pid = successor.pid();
                let sent = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
                    nix::sys::signal::Signal::SIGTERM,
                );
                warn!(self.log, "upgrade overtaken by a stop: the successor is told to stop too";
                    "from" => from, "child" => pid, "sigterm" => ?sent);
                // It drains within its own graces; the handle, dropped
                // here, neither kills nor waits.
                return (
                    false,
                    error_reply("upgrade overtaken by a stop: the service stops"),
                );
            }
            Ok(Ok(successor)) => {
                let pid = successor.pid();
                let to = successor.generation();
                info!(self.log, "upgrade succeeded"; "from" => from, "to" => to, "child" => pid,
                    "detail" => format!("generation {to} (pid {pid}) serves; generation {from} drains"));
                // The handle, dropped here, neither kills nor waits: the
                // successor outlives this process.
                self.drain.mark();
                // The hand-over told systemd READY=1 already, and the
                // successor names itself the main process once this one
                // exited; from now on this process sends nothing (above
                // all no STOPPING=1 when it drains, which would stop the
                // whole unit).
                if let Some(notifier) = &self.notifier {
                    if let Err(e) = notifier.send(HandedOver { pid }).await {
                        warn!(self.log, "notifier gone"; "error" => %e);
                    }
                }
                self.coordinator.do_send(BeginShutdown);
                return (true, upgrade_reply(from, to, Some(pid), None));
            }
            // Logged by the blocking task already.
            Ok(Err(_)) if cancel.load(Ordering::SeqCst) => {
                return (
                    false,
                    error_reply("upgrade cancelled by a stop: the service stops"),
                )
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("the hand-over task failed: {e}"),
        };
        *failed += 1;
        self.metrics.record_failed();
        error!(self.log, "upgrade failed"; "from" => from, "to" => from + 1, "reason" => &reason,
            "upgrades_failed" => *failed, "detail" => format!("generation {from} keeps serving"));
        let reply = upgrade_reply(from, from + 1, None, Some(&reason));
        (false, reply)
    }
}

/// How often a successor looks whether its predecessor exited.
const PARENT_CHECK: std::time::Duration = std::time::Duration::from_millis(10);

/// In a successor that notifies systemd (started by its predecessor, not by
/// a privileged parent): waits until the predecessor `parent` exited (this
/// process is re-parented, to systemd), then sends `MAINPID=<own pid>`.
///
/// Sent earlier, while `parent` lives, systemd would supervise this
/// process as "not our child" for the rest of its life and, on a stop, not
/// wait for it before SIGKILL (see `lifecycle_handoff`'s successor module
/// and deploy/README.md). Until then the predecessor is the main process
/// (`ExitType=cgroup` keeps the unit up between its exit and this
/// message; `NotifyAccess=all` lets this message in).
pub(crate) fn announce_main_pid_after_parent(
    parent: nix::unistd::Pid,
    notifier: Addr<SystemdNotifier>,
    generation: u64,
    log: Logger,
) {
    actix::spawn(async move {
        let mut tick = tokio::time::interval(PARENT_CHECK);
        while nix::unistd::getppid() == parent {
            tick.tick().await;
        }
        let pid = std::process::id();
        match notifier.send(SendMainPid { pid }).await {
            Ok(Ok(())) => info!(log, "main process announced: the predecessor exited";
                "main_pid" => pid, "predecessor" => parent.as_raw(), "generation" => generation),
            Ok(Err(e)) => {
                warn!(log, "MAINPID= not sent; systemd may not notice when this process exits"; "error" => %e)
            }
            Err(e) => warn!(log, "notifier gone"; "error" => %e),
        }
    });
}
