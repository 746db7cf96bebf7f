//! The shutdown phases and the cheap handle through which handlers see them.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// Where a service is in its life. Phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Serving normally.
    Running,
    /// Refusing new work (SMTP 421, IMAP BYE, HTTP 503); open work may finish.
    Draining,
    /// Drain grace is over or nothing is left: live connections are aborted.
    Aborting,
    /// Everything is closed or the abort grace expired.
    Stopped,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Running,
            1 => Phase::Draining,
            2 => Phase::Aborting,
            _ => Phase::Stopped,
        }
    }

    /// Lower-case name for logs: `running`, `draining`, `aborting`, `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Draining => "draining",
            Phase::Aborting => "aborting",
            Phase::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug)]
struct Inner {
    phase: AtomicU8,
    draining: CancellationToken,
    aborting: CancellationToken,
    stopped: CancellationToken,
}

/// A cheap, cloneable view of the shutdown phase for protocol handlers.
///
/// Reading the phase is one atomic load. Long operations can wait on
/// [`draining`](Self::draining) (mox's `Shutdown` context: stop taking new
/// work) or [`aborting`](Self::aborting) (mox's `Context`: abandon work).
///
/// ```
/// use actix_lifecycle::{Phase, PhaseController};
///
/// let controller = PhaseController::new();
/// let handle = controller.handle();
/// assert_eq!(handle.phase(), Phase::Running);
/// controller.advance(Phase::Draining);
/// assert!(handle.is_draining());
/// assert!(handle.drain_token().is_cancelled());
/// assert!(!handle.abort_token().is_cancelled());
/// ```
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    inner: Arc<Inner>,
}

impl ShutdownHandle {
    /// The current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.inner.phase.load(Ordering::Acquire))
    }

    /// True from `Draining` on: new work must be refused.
    pub fn is_draining(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// A token cancelled when draining starts (mox's `Shutdown` context).
    pub fn drain_token(&self) -> CancellationToken {
        self.inner.draining.clone()
    }

    /// A token cancelled when aborting starts (mox's `Context`).
    pub fn abort_token(&self) -> CancellationToken {
        self.inner.aborting.clone()
    }

    /// Resolves once the phase is `Draining` or later.
    pub async fn draining(&self) {
        self.inner.draining.cancelled().await
    }

    /// Resolves once the phase is `Aborting` or later.
    pub async fn aborting(&self) {
        self.inner.aborting.cancelled().await
    }

    /// Resolves once the phase is `Stopped`.
    pub async fn stopped(&self) {
        self.inner.stopped.cancelled().await
    }
}

/// The writing side of the phase: owned by the shutdown coordinator (or a
/// test harness). Advancing is idempotent and never moves backwards.
#[derive(Debug)]
pub struct PhaseController {
    handle: ShutdownHandle,
}

impl Default for PhaseController {
    fn default() -> Self {
        Self::new()
    }
}

impl PhaseController {
    /// A controller in phase `Running`.
    pub fn new() -> Self {
        PhaseController {
            handle: ShutdownHandle {
                inner: Arc::new(Inner {
                    phase: AtomicU8::new(Phase::Running as u8),
                    draining: CancellationToken::new(),
                    aborting: CancellationToken::new(),
                    stopped: CancellationToken::new(),
                }),
            },
        }
    }

    /// A handle for handlers.
    pub fn handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Moves to `to` (and through every phase before it) if it is later than
    /// the current phase. Returns true when the phase changed.
    pub fn advance(&self, to: Phase) -> bool {
        let inner = &self.handle.inner;
        let prev = Phase::from_u8(inner.phase.fetch_max(to as u8, Ordering::AcqRel));
        if to <= prev {
            return false;
        }
        if to >= Phase::Draining {
            inner.draining.cancel();
        }
        if to >= Phase::Aborting {
            inner.aborting.cancel();
        }
        if to >= Phase::Stopped {
            inner.stopped.cancel();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_only_move_forward() {
        let c = PhaseController::new();
        let h = c.handle();
        assert!(c.advance(Phase::Aborting));
        assert!(
            h.drain_token().is_cancelled(),
            "skipping a phase passes through it"
        );
        assert!(h.abort_token().is_cancelled());
        assert!(!c.advance(Phase::Draining));
        assert_eq!(h.phase(), Phase::Aborting);
        assert!(c.advance(Phase::Stopped));
        assert_eq!(h.phase(), Phase::Stopped);
    }
}
