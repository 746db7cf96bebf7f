//! The supervisor's side of the control socket: `status`, `upgrade`
//! (joined by concurrent callers) and `stop`, answered from the loop.

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use super::child::Generation;
use super::relay::Children;
use super::run::Loop;
use super::{SupervisorEvent, UpgradeFailure};
use crate::control::{
    error_reply, server::ClientId, upgrade_reply, ControlCommand, CONTROL_PROTOCOL_VERSION,
};
use crate::error::Result;

impl<F: FnMut(&SupervisorEvent)> Loop<'_, F> {
    /// Serves the control socket's readable descriptors (indexes into its
    /// `fds`) and expired clients.
    pub(super) fn serve_control(&mut self, readable: &[usize]) -> Result<()> {
        let Some(control) = &mut self.control else {
            return Ok(());
        };
        for (client, command) in control.service(readable) {
            self.emit(SupervisorEvent::ControlRequest {
                command: command.name(),
            });
            match command {
                ControlCommand::Status => {
                    let status = self.status();
                    self.relay(client, command, status);
                }
                ControlCommand::Upgrade { wait } => self.control_upgrade(client, wait)?,
                ControlCommand::Stop => {
                    self.stop(Signal::SIGTERM);
                    let reply = json!({"version": CONTROL_PROTOCOL_VERSION, "ok": true,
                        "stopping": true, "pid": std::process::id()});
                    if let Some(control) = &mut self.control {
                        control.hold(client, &reply);
                    }
                }
                ControlCommand::Connections => {
                    let reply = json!({"version": CONTROL_PROTOCOL_VERSION, "ok": true,
                        "pid": std::process::id(), "live": 0, "connections": []});
                    self.relay(client, command, reply);
                }
            }
        }
        Ok(())
    }

    /// Answers `client` with `reply` completed by the children (their
    /// listeners, live counts, connections) from a helper thread; with the
    /// parent's own `reply` when no child has an endpoint or too many
    /// relays run (marked `incomplete`).
    fn relay(&mut self, client: ClientId, command: ControlCommand, mut reply: Value) {
        let endpoint = |g: &Generation| g.endpoint.as_ref().map(|e| (g.number, e.path.clone()));
        let children = Children {
            serving: self.serving.as_ref().and_then(endpoint),
            draining: self.draining.iter().filter_map(endpoint).collect(),
        };
        let none = children.serving.is_none() && children.draining.is_empty();
        if none || !self.relays.available() {
            let why = if none {
                "no serving child with a control endpoint"
            } else {
                "too many control requests at once"
            };
            reply["incomplete"] = json!([why]);
            self.reply(client, &reply);
            return;
        }
        if let Some(stream) = self.control.as_mut().and_then(|c| c.detach(client)) {
            self.relays.start(stream, command, reply, children);
        }
    }

    fn reply(&mut self, client: ClientId, reply: &Value) {
        if let Some(control) = &mut self.control {
            control.reply(client, reply);
        }
    }

    fn control_upgrade(&mut self, client: ClientId, wait: bool) -> Result<()> {
        if self.stopping {
            self.reply(
                client,
                &error_reply("upgrade refused: the service is stopping"),
            );
            return Ok(());
        }
        let Some(serving) = &self.serving else {
            self.reply(
                client,
                &error_reply(
                    "upgrade refused: the service is still starting; try again once it is ready",
                ),
            );
            return Ok(());
        };
        let from = serving.number;
        if let Some(candidate) = &self.candidate {
            let to = candidate.generation.number;
            if wait {
                // One upgrade, the same answer for every caller.
                self.waiters.push(client);
            } else {
                let message = format!(
                    "upgrade in progress: generation {to} is starting (from {from}); \
                     use --wait to wait for its result"
                );
                self.reply(client, &error_reply(&message));
            }
            return Ok(());
        }
        let to = self.next_generation;
        if wait {
            self.waiters.push(client);
        }
        self.start_upgrade("control socket")?;
        if !wait {
            let reply = match (&self.candidate, &self.last_upgrade) {
                (Some(candidate), _) => json!({"version": CONTROL_PROTOCOL_VERSION, "ok": true,
                    "started": true, "from": from, "to": candidate.generation.number,
                    "pid": candidate.generation.pid()}),
                (None, Some(last)) if last["to"] == json!(to) => last.clone(),
                (None, _) => error_reply("upgrade failed to start"),
            };
            self.reply(client, &reply);
        }
        Ok(())
    }

    /// The upgrade from `from` to `to` is settled: remembers it and answers
    /// every waiting caller.
    pub(super) fn upgrade_settled(
        &mut self,
        from: u64,
        to: u64,
        pid: Option<u32>,
        failure: Option<&UpgradeFailure>,
    ) {
        let failure = failure.map(ToString::to_string);
        let reply = upgrade_reply(from, to, pid, failure.as_deref());
        for client in std::mem::take(&mut self.waiters) {
            self.reply(client, &reply);
        }
        self.last_upgrade = Some(reply);
    }

    /// The `status` reply.
    pub(super) fn status(&self) -> Value {
        let phase = if self.stopping {
            "stopping"
        } else if self.serving.is_none() {
            "starting"
        } else if self.candidate.is_some() {
            "upgrading"
        } else {
            "serving"
        };
        let grace = self.supervisor.child_grace.as_secs();
        let draining: Vec<Value> = (self.draining.iter())
            .map(|g| {
                let since = (self.draining_since.iter())
                    .find(|(n, _)| *n == g.number)
                    .map_or(0, |(_, at)| *at);
                json!({"generation": g.number, "pid": g.pid(), "since": since,
                    "deadline": since + grace})
            })
            .collect();
        json!({
            "version": CONTROL_PROTOCOL_VERSION,
            "ok": true,
            "mode": "privileged",
            "pid": std::process::id(),
            "phase": phase,
            "generation": self.serving.as_ref().map(|g| g.number),
            "serving": self.serving.as_ref().map(|g| json!({"generation": g.number, "pid": g.pid()})),
            "candidate": self.candidate.as_ref().map(|c| json!({"generation": c.generation.number,
                "pid": c.generation.pid()})),
            "draining": draining,
            "upgrades": {"ok": self.stats.succeeded, "failed": self.stats.failed},
            "last_upgrade": self.last_upgrade,
            "control_socket": self.control.as_ref().map(|c| c.path().display().to_string()),
        })
    }
}
