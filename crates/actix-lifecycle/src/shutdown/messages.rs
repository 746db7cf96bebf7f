//! Messages of the [`ShutdownCoordinator`](super::ShutdownCoordinator) and
//! the outcome it replies with.

use std::time::Duration;

use actix::Message;

use crate::phase::Phase;
use crate::registry::ConnectionInfo;

/// Begin a graceful shutdown, as the first SIGTERM would. Idempotent: a
/// second `BeginShutdown` does not force anything.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct BeginShutdown;

/// Ends the lame duck now: the shutdown moves on to `Draining` (as a
/// second signal during the lame duck does). Does nothing in any other
/// phase. For a service that knows the lame duck is pointless, e.g. an
/// upgrade whose successor already serves the same sockets.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct EndLameDuck;

/// What a received SIGTERM or SIGINT does: the first begins the shutdown
/// (the lame duck if one is configured, else draining); a second one
/// during the lame duck ends it (draining starts); a second one while
/// draining or aborting forces an exit through the force-exit policy
/// ([`ShutdownBuilder::on_force_exit`](super::ShutdownBuilder::on_force_exit)) with status `128 + signal`.
/// The coordinator sends this to itself for real signals; tests may send it.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct SignalReceived {
    /// The signal number (`libc::SIGTERM`, `libc::SIGINT`).
    pub signal: i32,
}

/// Something the service cannot run without failed (for instance a
/// listener's accept loop): logs `reason` at error level, begins the
/// shutdown as [`BeginShutdown`] does, and makes the stop ask for exit
/// status 1 instead of 0.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Fatal {
    /// What failed, for the log (name the culprit).
    pub reason: String,
}

/// Resolves when the phase is `Stopped`, with how it ended.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "StopOutcome")]
pub struct WaitStopped;

/// The current phase.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Phase")]
pub struct GetPhase;

/// How a shutdown ended (the reply to [`WaitStopped`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StopOutcome {
    /// The process exit status this stop asks for: 0 for a clean stop.
    pub exit_code: i32,
    /// Connections still open when the abort grace expired (each logged).
    pub left_open: Vec<ConnectionInfo>,
    /// From the start of the shutdown (lame duck included) to `Stopped`.
    pub elapsed: Duration,
}

impl StopOutcome {
    /// The outcome of a stop that did not happen as such (an actor gone
    /// before it answered, a harness never started): `exit_code`, nothing
    /// left open, no time elapsed.
    pub(crate) fn without_stop(exit_code: i32) -> StopOutcome {
        StopOutcome {
            exit_code,
            left_open: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }
}
