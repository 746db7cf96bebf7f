//! What the serving process answers on its control socket, and the desk
//! where `upgrade` requests meet the hand-over task.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use actix::Addr;
use actix_lifecycle::{BeginShutdown, RegistryHandle, ShutdownCoordinator, ShutdownHandle};
use lifecycle_handoff::{error_reply, ControlCommand, Lineage, CONTROL_PROTOCOL_VERSION};
use serde_json::{json, Value};
use slog::{info, Logger};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// An `upgrade` request from a control client, for the hand-over task.
#[derive(Debug)]
pub(crate) struct UpgradeRequest {
    /// Answer once the upgrade is settled (else once it started).
    pub(crate) wait: bool,
    /// Where the answer goes.
    pub(crate) reply: oneshot::Sender<Value>,
}

#[derive(Debug, Default)]
struct DeskState {
    /// The generation being started, during a hand-over.
    upgrading: Option<u64>,
    ok: u64,
    failed: u64,
    last: Option<Value>,
}

/// Where control clients ask for an upgrade and the hand-over task reports
/// it: requests (answered by the task), whether one runs, the counts and
/// the last result (for `status`), and whether this process handed over.
#[derive(Debug, Clone)]
pub(crate) struct UpgradeDesk {
    requests: mpsc::UnboundedSender<UpgradeRequest>,
    state: Arc<Mutex<DeskState>>,
    handed_over: CancellationToken,
}

impl UpgradeDesk {
    /// A desk starting from `lineage`'s counts, and the receiving end for
    /// the hand-over task. (The requests are bounded by the clients served
    /// at once: one each.)
    pub(crate) fn new(lineage: &Lineage) -> (UpgradeDesk, mpsc::UnboundedReceiver<UpgradeRequest>) {
        let (requests, receiver) = mpsc::unbounded_channel();
        let state = DeskState {
            // The hand-over that started this process counts too.
            ok: lineage.succeeded_including_self(),
            failed: lineage.upgrades_failed,
            ..DeskState::default()
        };
        let desk = UpgradeDesk {
            requests,
            state: Arc::new(Mutex::new(state)),
            handed_over: CancellationToken::new(),
        };
        (desk, receiver)
    }

    fn with<T>(&self, f: impl FnOnce(&mut DeskState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Cancelled once a successor serves (this process stops accepting
    /// control clients).
    pub(crate) fn handed_over(&self) -> CancellationToken {
        self.handed_over.clone()
    }

    /// A hand-over to generation `to` started.
    pub(crate) fn started(&self, to: u64) {
        self.with(|s| s.upgrading = Some(to));
    }

    /// The hand-over ended with `reply` (the `upgrade --wait` answer);
    /// `handed_over` when the successor serves now.
    pub(crate) fn settled(&self, reply: &Value, handed_over: bool) {
        self.with(|s| {
            s.upgrading = None;
            match reply["result"].as_str() {
                Some("ok") => s.ok += 1,
                Some("failed") => s.failed += 1,
                _ => {}
            }
            s.last = Some(reply.clone());
        });
        if handed_over {
            self.handed_over.cancel();
        }
    }
}

/// What the control socket's replies are made of.
pub(crate) struct ControlContext {
    /// The start mode (`systemd`, `immediate`, `inherited`).
    pub(crate) mode: &'static str,
    /// This process's generation.
    pub(crate) generation: u64,
    /// The predecessor that started this process, if any (draining while
    /// it lives).
    pub(crate) predecessor: Option<nix::unistd::Pid>,
    /// The connection registry.
    pub(crate) registry: RegistryHandle,
    /// The shutdown phase.
    pub(crate) shutdown: ShutdownHandle,
    /// Where `stop` goes.
    pub(crate) coordinator: Addr<ShutdownCoordinator>,
    /// Where `upgrade` goes.
    pub(crate) desk: UpgradeDesk,
    /// The socket's path, for `status`.
    pub(crate) path: PathBuf,
    /// The control log.
    pub(crate) log: Logger,
}

impl ControlContext {
    /// The reply to `command`.
    pub(crate) async fn answer(&self, command: ControlCommand) -> Value {
        info!(self.log, "control request"; "command" => command.name());
        match command {
            ControlCommand::Status => self.status(),
            ControlCommand::Connections => self.connections(),
            ControlCommand::Stop => {
                self.coordinator.do_send(BeginShutdown);
                json!({"version": CONTROL_PROTOCOL_VERSION, "ok": true, "stopping": true,
                    "pid": std::process::id()})
            }
            ControlCommand::Upgrade { wait } => self.upgrade(wait).await,
        }
    }

    async fn upgrade(&self, wait: bool) -> Value {
        let from = self.generation;
        if let (false, Some(to)) = (wait, self.desk.with(|s| s.upgrading)) {
            return error_reply(&format!(
                "upgrade in progress: generation {to} is starting (from {from}); \
                 use --wait to wait for its result"
            ));
        }
        let (reply, answer) = oneshot::channel();
        if self
            .desk
            .requests
            .send(UpgradeRequest { wait, reply })
            .is_err()
        {
            return error_reply(
                "upgrade refused: this process no longer takes upgrades \
                 (it handed over to a successor, or it is stopping); ask again",
            );
        }
        answer.await.unwrap_or_else(|_| {
            error_reply("upgrade refused: the hand-over task ended (the service is stopping)")
        })
    }

    fn status(&self) -> Value {
        let pid = std::process::id();
        let snapshot = self.registry.snapshot();
        let (upgrading, ok, failed, last) = self
            .desk
            .with(|s| (s.upgrading, s.ok, s.failed, s.last.clone()));
        let phase = match (upgrading, self.shutdown.phase().as_str()) {
            (Some(_), "running") => "upgrading",
            (_, phase) => phase,
        };
        let listeners: Vec<Value> = (snapshot.kinds.iter())
            .map(|k| {
                json!({"name": &*k.listener, "protocol": &*k.protocol, "live": k.live,
                    "accepted": k.accepted, "aborted": k.aborted, "refused": k.refused.total()})
            })
            .collect();
        // A successor's predecessor drains until it exits (its own control
        // socket is this one: its live count is not known here).
        let draining: Vec<Value> = (self.predecessor.iter())
            .filter(|&&p| nix::unistd::getppid() == p)
            .map(|p| json!({"generation": self.generation.saturating_sub(1), "pid": p.as_raw()}))
            .collect();
        json!({
            "version": CONTROL_PROTOCOL_VERSION,
            "ok": true,
            "mode": self.mode,
            "pid": pid,
            "phase": phase,
            "generation": self.generation,
            "serving": {"generation": self.generation, "pid": pid, "live": snapshot.live},
            "candidate": upgrading.map(|to| json!({"generation": to, "pid": null})),
            "draining": draining,
            "listeners": listeners,
            "upgrades": {"ok": ok, "failed": failed},
            "last_upgrade": last,
            "control_socket": self.path.display().to_string(),
        })
    }

    fn connections(&self) -> Value {
        let snapshot = self.registry.snapshot();
        let connections: Vec<Value> = (snapshot.entries.iter())
            .map(|c| {
                json!({"id": c.id, "peer": null, "protocol": &*c.protocol,
                    "listener": &*c.listener, "age_secs": c.age.as_secs(),
                    "generation": self.generation, "aborted": c.aborted})
            })
            .collect();
        json!({"version": CONTROL_PROTOCOL_VERSION, "ok": true, "pid": std::process::id(),
            "generation": self.generation, "live": snapshot.live, "connections": connections})
    }
}
