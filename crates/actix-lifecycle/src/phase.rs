//! The shutdown phases and the cheap handle through which handlers see them.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The share of the drain grace over which [`ShutdownHandle::draining_paced`]
/// spreads its wake-ups: the last ones still leave a tenth of the grace for
/// the goodbye to leave before connections are aborted.
const PACE_SHARE: f64 = 0.9;

/// Where a service is in its life. Phases only move forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Serving normally.
    Running,
    /// Shutting down but still serving normally: readiness checks fail
    /// (`/readyz` 503) so that load balancers stop sending new clients
    /// before the service refuses any. Lasts the configured lame duck
    /// (0 s by default: skipped).
    LameDuck,
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
            1 => Phase::LameDuck,
            2 => Phase::Draining,
            3 => Phase::Aborting,
            _ => Phase::Stopped,
        }
    }

    /// Every phase, in order.
    pub const ALL: [Phase; 5] = [
        Phase::Running,
        Phase::LameDuck,
        Phase::Draining,
        Phase::Aborting,
        Phase::Stopped,
    ];

    /// Lower-case name for logs and metrics: `running`, `lame_duck`,
    /// `draining`, `aborting`, `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::LameDuck => "lame_duck",
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
    shutting_down: CancellationToken,
    /// When `Draining` began (for [`ShutdownHandle::draining_paced`]).
    drain_began: OnceLock<Instant>,
    /// The drain grace in nanoseconds (0: unknown, no pacing).
    drain_grace_ns: AtomicU64,
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

    /// True from `LameDuck` on: the service is stopping and must not be
    /// reported ready (`/readyz` 503), though in `LameDuck` it still serves
    /// normally.
    pub fn is_shutting_down(&self) -> bool {
        self.phase() >= Phase::LameDuck
    }

    /// A token cancelled when the shutdown begins (`LameDuck`, or
    /// `Draining` when there is no lame duck).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutting_down.clone()
    }

    /// Resolves once the phase is `LameDuck` or later.
    pub async fn shutting_down(&self) {
        self.inner.shutting_down.cancelled().await
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

    /// Resolves at an instant drawn uniformly from the first nine tenths
    /// of the drain window, counted from the start of `Draining`: for
    /// long-lived idle sessions (IMAP, websockets) that should say goodbye
    /// during the drain, but not all in the same millisecond, so that their
    /// reconnects to other instances do not arrive as one storm. The
    /// instant is drawn once per call: create the future once per
    /// connection and keep it (pinned) across waits. Resolves at once if
    /// the drain began longer ago than the drawn offset, with `Aborting`,
    /// and right with `Draining` when the drain grace is unknown (a bare
    /// [`PhaseController`] without [`set_drain_grace`](PhaseController::set_drain_grace)).
    ///
    /// ```
    /// # async fn session(shutdown: actix_lifecycle::ShutdownHandle) {
    /// let bye = shutdown.draining_paced();
    /// tokio::pin!(bye);
    /// loop {
    ///     tokio::select! {
    ///         () = &mut bye => break, // say goodbye and close
    ///         // line = read_line() => { ... }
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn draining_paced(&self) {
        let share = uniform_unit();
        tokio::select! {
            biased;
            () = self.aborting() => {}
            () = async {
                self.draining().await;
                let grace = Duration::from_nanos(self.inner.drain_grace_ns.load(Ordering::Acquire));
                let offset = grace.mul_f64(PACE_SHARE * share);
                if let Some(began) = self.inner.drain_began.get() {
                    tokio::time::sleep_until(*began + offset).await;
                }
            } => {}
        }
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
                    shutting_down: CancellationToken::new(),
                    drain_began: OnceLock::new(),
                    drain_grace_ns: AtomicU64::new(0),
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

    /// The drain grace the coordinator applies, over which
    /// [`ShutdownHandle::draining_paced`] spreads its wake-ups. Default:
    /// unknown (no pacing). Set it before `Draining` begins.
    pub fn set_drain_grace(&self, grace: Duration) {
        let ns = u64::try_from(grace.as_nanos()).unwrap_or(u64::MAX);
        self.handle
            .inner
            .drain_grace_ns
            .store(ns, Ordering::Release);
    }

    /// Moves to `to` (and through every phase before it) if it is later than
    /// the current phase. Returns true when the phase changed.
    pub fn advance(&self, to: Phase) -> bool {
        let inner = &self.handle.inner;
        let prev = Phase::from_u8(inner.phase.fetch_max(to as u8, Ordering::AcqRel));
        if to <= prev {
            return false;
        }
        if to >= Phase::LameDuck {
            inner.shutting_down.cancel();
        }
        if to >= Phase::Draining {
            inner.drain_began.get_or_init(Instant::now);
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

/// A number drawn uniformly from `[0, 1)`: the standard library's
/// randomly keyed SipHash over a process-wide counter (no RNG dependency;
/// spreading wake-ups needs no cryptographic quality).
fn uniform_unit() -> f64 {
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
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

    #[test]
    fn lame_duck_is_shutting_down_but_not_draining() {
        let c = PhaseController::new();
        let h = c.handle();
        assert!(!h.is_shutting_down());
        assert!(c.advance(Phase::LameDuck));
        assert!(h.is_shutting_down());
        assert!(h.shutdown_token().is_cancelled());
        assert!(!h.is_draining());
        assert!(!h.drain_token().is_cancelled());
        assert!(c.advance(Phase::Draining));
        assert!(h.is_draining());
    }

    #[tokio::test(start_paused = true)]
    async fn draining_paced_spreads_wakeups_over_the_drain_window() {
        let grace = Duration::from_secs(2);
        let c = PhaseController::new();
        c.set_drain_grace(grace);
        let n = 400;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..n {
            let h = c.handle();
            let tx = tx.clone();
            tokio::spawn(async move {
                h.draining_paced().await;
                let _ = tx.send(Instant::now());
            });
        }
        drop(tx);
        tokio::task::yield_now().await;
        let began = Instant::now();
        c.advance(Phase::Draining);
        let mut bins = [0usize; 20];
        let mut last = Duration::ZERO;
        while let Some(at) = rx.recv().await {
            let offset = at - began;
            last = last.max(offset);
            bins[(offset.as_millis() / 100).min(19) as usize] += 1;
        }
        println!("wake-ups per 100 ms: {bins:?}");
        assert!(
            last <= grace.mul_f64(PACE_SHARE),
            "all before {PACE_SHARE} of the grace: {last:?}"
        );
        assert!(
            last >= Duration::from_millis(1500),
            "spread over the window: {last:?}"
        );
        assert!(
            bins.iter().all(|b| *b <= n * 15 / 100),
            "no 100 ms holds 15 %: {bins:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn draining_paced_without_a_grace_or_late_resolves_with_draining() {
        let c = PhaseController::new();
        let h = c.handle();
        c.advance(Phase::Draining);
        let began = Instant::now();
        h.draining_paced().await;
        assert_eq!(Instant::now(), began, "no drain grace known: no pacing");

        let c = PhaseController::new();
        c.set_drain_grace(Duration::from_secs(10));
        let h = c.handle();
        c.advance(Phase::Aborting);
        let began = Instant::now();
        h.draining_paced().await;
        assert_eq!(Instant::now(), began, "aborting ends the pacing");
    }
}
