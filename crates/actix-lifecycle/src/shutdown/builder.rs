//! [`ShutdownBuilder`]: the bounds of a shutdown and how signals are taken.

use std::sync::Arc;
use std::time::Duration;

use slog::{o, Logger};

use super::signals::install_signal_streams;
use super::ShutdownCoordinator;
use crate::phase::PhaseController;
use crate::registry::RegistryHandle;

/// Default time handlers get to finish open work before connections are aborted.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(3);
/// Default time aborted connections get to close before the service stops anyway.
pub const DEFAULT_ABORT_GRACE: Duration = Duration::from_secs(1);
/// Default lame duck: none, draining starts at once.
pub const DEFAULT_LAME_DUCK: Duration = Duration::ZERO;

/// The three bounds of a shutdown, with their defaults. One value that
/// the builders pass on ([`LifecycleBuilder`](crate::LifecycleBuilder),
/// [`HarnessBuilder`](crate::HarnessBuilder) to [`ShutdownBuilder`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Graces {
    /// Serving normally while readiness fails ([`DEFAULT_LAME_DUCK`]).
    pub(crate) lame_duck: Duration,
    /// Handlers finish open work ([`DEFAULT_DRAIN_GRACE`]).
    pub(crate) drain: Duration,
    /// Aborted connections close ([`DEFAULT_ABORT_GRACE`]).
    pub(crate) abort: Duration,
}

impl Default for Graces {
    fn default() -> Self {
        Graces {
            lame_duck: DEFAULT_LAME_DUCK,
            drain: DEFAULT_DRAIN_GRACE,
            abort: DEFAULT_ABORT_GRACE,
        }
    }
}

/// The setters of the three shutdown bounds (`lame_duck`, `drain_grace`,
/// `abort_grace`), one text for every builder that collects them into a
/// `graces: Graces` field ([`ShutdownBuilder`],
/// [`LifecycleBuilder`](crate::LifecycleBuilder),
/// [`HarnessBuilder`](crate::HarnessBuilder)).
///
/// `grace_setters!(and graces)` adds the crate's own `graces`, all three
/// at once, for the builders that pass them on.
macro_rules! grace_setters {
    (and graces) => {
        grace_setters!();

        /// All three bounds at once, as another builder collected them.
        pub(crate) fn graces(mut self, graces: Graces) -> Self {
            self.graces = graces;
            self
        }
    };
    () => {
        /// How long the service keeps serving normally once the shutdown
        /// began, while readiness checks already fail (phase `LameDuck`), so
        /// that a load balancer or Kubernetes stops sending new clients before
        /// any is refused. Waited in full even when nothing is open (the
        /// point is the time the balancer needs to notice). Default
        /// [`DEFAULT_LAME_DUCK`](crate::DEFAULT_LAME_DUCK) (none). A second
        /// signal ends it early.
        pub fn lame_duck(mut self, lame_duck: std::time::Duration) -> Self {
            self.graces.lame_duck = lame_duck;
            self
        }

        /// How long handlers may finish open work once draining starts.
        /// Default [`DEFAULT_DRAIN_GRACE`](crate::DEFAULT_DRAIN_GRACE) (3 s).
        /// Skipped when nothing is open.
        pub fn drain_grace(mut self, grace: std::time::Duration) -> Self {
            self.graces.drain = grace;
            self
        }

        /// How long aborted connections may take to close. Default
        /// [`DEFAULT_ABORT_GRACE`](crate::DEFAULT_ABORT_GRACE) (1 s).
        /// Skipped when nothing is open.
        pub fn abort_grace(mut self, grace: std::time::Duration) -> Self {
            self.graces.abort = grace;
            self
        }
    };
}
pub(crate) use grace_setters;

/// What a second signal does, given the exit status.
pub(super) type ForceExit = Arc<dyn Fn(i32) + Send + Sync>;

/// Builds a [`ShutdownCoordinator`].
///
/// ```
/// use std::time::Duration;
/// use actix_lifecycle::{ConnectionRegistry, ShutdownCoordinator};
///
/// let registry = ConnectionRegistry::builder().build().unwrap();
/// let coordinator = ShutdownCoordinator::builder(registry.handle())
///     .lame_duck(Duration::from_secs(5))
///     .drain_grace(Duration::from_secs(10))
///     .abort_grace(Duration::from_millis(500))
///     .handle_signals(false)
///     .build();
/// let handle = coordinator.handle(); // give this to protocol handlers
/// # drop(handle);
/// ```
#[must_use]
pub struct ShutdownBuilder {
    registry: RegistryHandle,
    log: Logger,
    graces: Graces,
    signals: bool,
    stop_system: bool,
    force_exit: ForceExit,
}

impl std::fmt::Debug for ShutdownBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownBuilder")
            .field("graces", &self.graces)
            .field("signals", &self.signals)
            .field("stop_system", &self.stop_system)
            .finish()
    }
}

impl ShutdownBuilder {
    /// The defaults, for a coordinator of `registry`.
    pub(super) fn new(registry: RegistryHandle) -> ShutdownBuilder {
        let force_exit: ForceExit = Arc::new(|code| {
            // The logger may buffer (slog-async) and the exit would lose its
            // line: say it on standard error first, in one write.
            use std::io::Write as _;
            let line = format!(
                "actix-lifecycle: second signal during shutdown: exiting now with status {code}\n"
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            std::process::exit(code)
        });
        ShutdownBuilder {
            registry,
            log: Logger::root(slog::Discard, o!()),
            graces: Graces::default(),
            signals: true,
            stop_system: true,
            force_exit,
        }
    }

    /// Logs go to `log` (key `actor=shutdown`). Default: discarded.
    pub fn logger(mut self, log: Logger) -> Self {
        self.log = log;
        self
    }

    grace_setters!(and graces);

    /// Whether to listen for SIGTERM and SIGINT. Default true. Signal
    /// handlers are process-wide: a test harness running several instances
    /// in one process turns this off and sends [`BeginShutdown`](super::BeginShutdown).
    ///
    /// The handlers are installed by [`build`](Self::build) when it runs
    /// inside a tokio runtime (as [`Lifecycle::start`](crate::Lifecycle)
    /// does), so a SIGTERM that arrives before the actor has even started
    /// is queued and handled, not fatal; otherwise when the actor starts.
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.signals = on;
        self
    }

    /// Whether reaching `Stopped` stops the actix `System` with the exit
    /// code (0 for a clean stop). Default true; harnesses turn it off.
    pub fn stop_system(mut self, on: bool) -> Self {
        self.stop_system = on;
        self
    }

    /// What a second signal does, given the exit status (`128 + signal`).
    /// Default: log, write the reason to standard error (a logger that
    /// buffers would lose its line) and `std::process::exit(status)`. Tests inject a
    /// closure that records the call instead.
    pub fn on_force_exit(mut self, f: impl Fn(i32) + Send + Sync + 'static) -> Self {
        self.force_exit = Arc::new(f);
        self
    }

    /// The coordinator, not started. Inside a tokio runtime the SIGTERM
    /// and SIGINT handlers are installed here already (see
    /// [`handle_signals`](Self::handle_signals)); tokio keeps a handler
    /// for the life of the process, so build a coordinator that handles
    /// signals only to start it.
    pub fn build(self) -> ShutdownCoordinator {
        let signal_streams = if self.signals && tokio::runtime::Handle::try_current().is_ok() {
            // Only a complete set; otherwise the actor tries again when it
            // starts (on its arbiter, where the signal driver runs).
            let streams = install_signal_streams(&self.log);
            (streams.len() == 2).then_some(streams)
        } else {
            None
        };
        let controller = PhaseController::new();
        controller.set_drain_grace(self.graces.drain);
        ShutdownCoordinator {
            signal_streams,
            controller,
            registry: self.registry,
            log: self.log.new(o!("actor" => "shutdown")),
            graces: self.graces,
            signals: self.signals,
            stop_system: self.stop_system,
            force_exit: self.force_exit,
            began: None,
            exit_code: 0,
            outcome: None,
            waiters: Vec::new(),
        }
    }
}
