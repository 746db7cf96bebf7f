//! The systemd watchdog in the privileged start: the parent is the unit's
//! main process and the only one systemd hears (`NotifyAccess=main`), but
//! what must be proven alive is the serving child. So at half of
//! `WATCHDOG_USEC` the loop starts a probe: a helper thread asks the
//! serving child's control endpoint for its `status` (answered on the
//! child's actor system, within [`RELAY_TIMEOUT`]) and sends `WATCHDOG=1`
//! only when the child answered. A child that hangs (a stuck arbiter, a
//! SIGSTOP) withholds the pings, and systemd's `WatchdogSec=` fires
//! (`Result=watchdog`, then `Restart=`). The loop's own liveness is proven
//! too: it starts the probes.
//!
//! Without a control socket there is no endpoint to ask: the probe then
//! proves the parent's loop only (reported once at start, see
//! [`SupervisorEvent::WatchdogStarted`]). Before the first child is ready
//! (under the ready timeout) the parent pings for itself.

use std::io::ErrorKind;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use super::relay::{ask, RELAY_TIMEOUT};
use super::SupervisorEvent;
use crate::control::ControlCommand;
use crate::notify::{Notifier, NotifyState};

/// The outcome of one probe.
#[derive(Debug)]
pub(super) struct ProbeResult {
    /// The generation asked (`None`: no child to ask, the parent pinged
    /// for itself).
    generation: Option<u64>,
    /// Why no ping was sent: the child did not answer, or the ping failed.
    error: Option<String>,
}

/// The watchdog's state in the loop.
#[derive(Debug)]
pub(super) struct Watchdog {
    /// Pings are due at this interval (half of `WATCHDOG_USEC`).
    period: Duration,
    /// When the next probe starts.
    next: Instant,
    /// A probe is in flight; its result arrives on `results`.
    in_flight: bool,
    results: Receiver<ProbeResult>,
    sender: Sender<ProbeResult>,
    /// The last probe's generation and whether it failed, so that only a
    /// change is reported.
    last: Option<(Option<u64>, bool)>,
}

impl Watchdog {
    /// A watchdog for systemd's `interval` (`WATCHDOG_USEC`); the first
    /// probe starts at once.
    pub(super) fn new(interval: Duration) -> Watchdog {
        let (sender, results) = mpsc::channel();
        Watchdog {
            period: interval / 2,
            next: Instant::now(),
            in_flight: false,
            results,
            sender,
            last: None,
        }
    }

    /// When the loop must wake for the watchdog: the next probe, or (with
    /// one in flight) soon after its reply must have come.
    pub(super) fn deadline(&self) -> Instant {
        if self.in_flight {
            // ask() waits at most the probe timeout for each of its steps.
            self.next.min(Instant::now() + self.probe_timeout() / 4)
        } else {
            self.next
        }
    }

    /// How long the child may take to answer a probe: [`RELAY_TIMEOUT`],
    /// or half of the ping period when that is shorter, so that a child
    /// that does not answer is reported (`WatchdogWithheld`) before
    /// systemd's interval runs out and the watchdog ends the unit.
    fn probe_timeout(&self) -> Duration {
        RELAY_TIMEOUT.min(self.period / 2)
    }

    /// Collects finished probes (reporting a change of outcome as an
    /// event) and starts the next one when it is due. `serving` is the
    /// serving generation and its control endpoint, when there is one.
    pub(super) fn tick(
        &mut self,
        notifier: Option<&Notifier>,
        serving: Option<(u64, Option<PathBuf>)>,
        mut emit: impl FnMut(SupervisorEvent),
    ) {
        while let Ok(result) = self.results.try_recv() {
            self.in_flight = false;
            let failed = result.error.is_some();
            let changed = self.last != Some((result.generation, failed));
            self.last = Some((result.generation, failed));
            match result.error {
                Some(error) => emit(SupervisorEvent::WatchdogWithheld {
                    generation: result.generation,
                    error,
                }),
                None if changed => emit(SupervisorEvent::WatchdogPinging {
                    generation: result.generation,
                }),
                None => {}
            }
        }
        let now = Instant::now();
        if self.in_flight || now < self.next {
            return;
        }
        self.next = now + self.period;
        let Some(notifier) = notifier else {
            return;
        };
        // A fresh sender for the thread: the loop keeps its own.
        let socket = notifier.socket().to_owned();
        let (generation, endpoint) = match serving {
            Some((number, endpoint)) => (Some(number), endpoint),
            None => (None, None),
        };
        let sender = self.sender.clone();
        let timeout = self.probe_timeout();
        let spawned = std::thread::Builder::new()
            .name("watchdog-probe".to_owned())
            .spawn(move || {
                let error = probe(&socket, endpoint.as_deref(), timeout).err();
                let _ = sender.send(ProbeResult { generation, error });
            });
        match spawned {
            Ok(_) => self.in_flight = true,
            Err(e) => emit(SupervisorEvent::WatchdogWithheld {
                generation,
                error: format!("cannot start the probe thread: {e}"),
            }),
        }
    }
}

/// Asks the child at `endpoint` (when there is one) and pings systemd at
/// `socket` when it answered.
fn probe(
    socket: &str,
    endpoint: Option<&std::path::Path>,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(path) = endpoint {
        ask(path, ControlCommand::Status, timeout).map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                format!("the serving child did not answer its control endpoint within {timeout:?}")
            }
            _ => format!("the serving child did not answer its control endpoint: {e}"),
        })?;
    }
    let notifier = Notifier::new(socket).map_err(|e| e.to_string())?;
    notifier
        .notify(&[NotifyState::Watchdog])
        .map_err(|e| format!("WATCHDOG=1 not sent: {e}"))
}
