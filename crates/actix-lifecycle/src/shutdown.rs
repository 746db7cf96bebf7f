//! The shutdown coordinator: turns SIGTERM/SIGINT (or a message) into the
//! phases `Running → LameDuck → Draining → Aborting → Stopped`, bounded by
//! the lame duck and two graces.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, MessageResult, ResponseFuture,
    System, WrapFuture,
};
use actix_rt::signal::unix::{signal, Signal, SignalKind};
use futures_util::future::{select, Either};
use slog::{debug, error, info, o, warn, Logger};
use tokio::sync::oneshot;

use crate::phase::{Phase, PhaseController, ShutdownHandle};
use crate::registry::{ConnectionInfo, RegistryHandle};

/// Default time handlers get to finish open work before connections are aborted.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(3);
/// Default time aborted connections get to close before the service stops anyway.
pub const DEFAULT_ABORT_GRACE: Duration = Duration::from_secs(1);
/// Default lame duck: none, draining starts at once.
pub const DEFAULT_LAME_DUCK: Duration = Duration::ZERO;

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
/// ([`ShutdownBuilder::on_force_exit`]) with status `128 + signal`.
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

type ForceExit = Arc<dyn Fn(i32) + Send + Sync>;

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
    lame_duck: Duration,
    drain_grace: Duration,
    abort_grace: Duration,
    signals: bool,
    stop_system: bool,
    force_exit: ForceExit,
}

impl std::fmt::Debug for ShutdownBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownBuilder")
            .field("lame_duck", &self.lame_duck)
            .field("drain_grace", &self.drain_grace)
            .field("abort_grace", &self.abort_grace)
            .field("signals", &self.signals)
            .field("stop_system", &self.stop_system)
            .finish()
    }
}

impl ShutdownBuilder {
    /// Logs go to `log` (key `actor=shutdown`). Default: discarded.
    pub fn logger(mut self, log: Logger) -> Self {
        self.log = log;
        self
    }

    /// How long the service keeps serving normally once the shutdown
    /// began, while readiness checks already fail (phase `LameDuck`), so
    /// that a load balancer or Kubernetes stops sending new clients before
    /// any is refused. Waited in full even when nothing is open (the
    /// point is the time the balancer needs to notice). Default
    /// [`DEFAULT_LAME_DUCK`] (none). A second signal ends it early.
    pub fn lame_duck(mut self, lame_duck: Duration) -> Self {
        self.lame_duck = lame_duck;
        self
    }

    /// How long handlers may finish open work once draining starts.
    /// Default [`DEFAULT_DRAIN_GRACE`] (3 s). Skipped when nothing is open.
    pub fn drain_grace(mut self, grace: Duration) -> Self {
        self.drain_grace = grace;
        self
    }

    /// How long aborted connections may take to close. Default
    /// [`DEFAULT_ABORT_GRACE`] (1 s). Skipped when nothing is open.
    pub fn abort_grace(mut self, grace: Duration) -> Self {
        self.abort_grace = grace;
        self
    }

    /// Whether to listen for SIGTERM and SIGINT. Default true. Signal
    /// handlers are process-wide: a test harness running several instances
    /// in one process turns this off and sends [`BeginShutdown`].
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
        controller.set_drain_grace(self.drain_grace);
        ShutdownCoordinator {
            signal_streams,
            controller,
            registry: self.registry,
            log: self.log.new(o!("actor" => "shutdown")),
            lame_duck: self.lame_duck,
            drain_grace: self.drain_grace,
            abort_grace: self.abort_grace,
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

/// Turns SIGTERM/SIGINT (or [`BeginShutdown`]) into phases that handlers
/// observe through [`ShutdownHandle`]:
///
/// 0. `LameDuck` (only with a [`lame_duck`](ShutdownBuilder::lame_duck)):
///    readiness fails, everything else serves normally, for the whole
///    lame duck (a second signal or [`EndLameDuck`] ends it early).
/// 1. `Draining`: handlers refuse new work; listeners keep or stop
///    accepting as configured.
/// 2. `Aborting` after the drain grace, or as soon as no connection is
///    open: the registry aborts every connection.
/// 3. `Stopped` after the abort grace, or as soon as no connection is
///    open: every connection still open is logged, [`WaitStopped`]
///    waiters get the [`StopOutcome`], and the actix `System` stops with
///    exit code 0, or 1 after a [`Fatal`] (unless turned off).
///
/// An idle service goes through the phases after the lame duck at once.
/// The whole stop takes at most lame duck + drain grace + abort grace. A
/// second signal while draining or aborting forces an exit with a
/// non-zero status.
pub struct ShutdownCoordinator {
    controller: PhaseController,
    registry: RegistryHandle,
    log: Logger,
    lame_duck: Duration,
    drain_grace: Duration,
    abort_grace: Duration,
    signals: bool,
    /// Streams registered before the actor started; taken in `started`.
    signal_streams: Option<Vec<(Signal, i32)>>,
    stop_system: bool,
    force_exit: ForceExit,
    began: Option<Instant>,
    exit_code: i32,
    outcome: Option<StopOutcome>,
    waiters: Vec<oneshot::Sender<StopOutcome>>,
}

impl std::fmt::Debug for ShutdownCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownCoordinator")
            .field("phase", &self.controller.handle().phase())
            .field("lame_duck", &self.lame_duck)
            .field("drain_grace", &self.drain_grace)
            .field("abort_grace", &self.abort_grace)
            .finish()
    }
}

impl ShutdownCoordinator {
    /// A builder for a coordinator that shuts down `registry`.
    pub fn builder(registry: RegistryHandle) -> ShutdownBuilder {
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
            lame_duck: DEFAULT_LAME_DUCK,
            drain_grace: DEFAULT_DRAIN_GRACE,
            abort_grace: DEFAULT_ABORT_GRACE,
            signals: true,
            stop_system: true,
            force_exit,
        }
    }

    /// The handle protocol handlers watch.
    pub fn handle(&self) -> ShutdownHandle {
        self.controller.handle()
    }

    fn phase(&self) -> Phase {
        self.controller.handle().phase()
    }

    fn begin(&mut self, ctx: &mut Context<Self>, why: &str) {
        if self.began.is_some() {
            debug!(self.log, "shutdown already under way"; "trigger" => why);
            return;
        }
        self.began = Some(Instant::now());
        if self.lame_duck.is_zero() {
            self.enter_draining(ctx, why);
            return;
        }
        self.controller.advance(Phase::LameDuck);
        info!(self.log, "phase"; "phase" => Phase::LameDuck.as_str(), "trigger" => why,
            "live" => self.registry.live(), "lame_duck_ms" => self.lame_duck.as_millis() as u64);
        ctx.run_later(self.lame_duck, |act, ctx| {
            act.enter_draining(ctx, "lame duck over")
        });
    }

    fn enter_draining(&mut self, ctx: &mut Context<Self>, why: &str) {
        if !self.controller.advance(Phase::Draining) {
            return;
        }
        let live = self.registry.live();
        info!(self.log, "phase"; "phase" => Phase::Draining.as_str(), "trigger" => why,
            "live" => live, "drain_grace_ms" => self.drain_grace.as_millis() as u64);
        if live == 0 {
            self.enter_aborting(ctx, "nothing open");
            return;
        }
        self.wait_then(ctx, self.drain_grace, |act, ctx, why| {
            act.enter_aborting(ctx, why)
        });
    }

    /// Waits for the registry to empty or `grace` to pass, then calls `next`.
    fn wait_then(
        &mut self,
        ctx: &mut Context<Self>,
        grace: Duration,
        next: fn(&mut Self, &mut Context<Self>, &'static str),
    ) {
        let done = Box::pin(self.registry.done());
        let timer = Box::pin(actix_rt::time::sleep(grace));
        let wait = async move {
            match select(done, timer).await {
                Either::Left(_) => "nothing open",
                Either::Right(_) => "grace expired",
            }
        };
        ctx.spawn(
            wait.into_actor(self)
                .map(move |why, act, ctx| next(act, ctx, why)),
        );
    }

    fn enter_aborting(&mut self, ctx: &mut Context<Self>, why: &'static str) {
        if self.phase() >= Phase::Aborting {
            return;
        }
        self.controller.advance(Phase::Aborting);
        let aborted = self.registry.shutdown();
        let live = self.registry.live();
        info!(self.log, "phase"; "phase" => "aborting", "reason" => why, "aborted" => aborted,
            "live" => live, "abort_grace_ms" => self.abort_grace.as_millis() as u64);
        if live == 0 {
            self.enter_stopped(ctx, "nothing open");
            return;
        }
        self.wait_then(ctx, self.abort_grace, |act, ctx, why| {
            act.enter_stopped(ctx, why)
        });
    }

    fn enter_stopped(&mut self, _ctx: &mut Context<Self>, why: &'static str) {
        if self.phase() >= Phase::Stopped {
            return;
        }
        let left_open = self.registry.snapshot().entries;
        for c in &left_open {
            warn!(self.log, "connection still open at stop";
                "conn" => c.id, "protocol" => &*c.protocol, "listener" => &*c.listener,
                "age_ms" => c.age.as_millis() as u64, "aborted" => c.aborted);
        }
        let elapsed = self.began.map(|t| t.elapsed()).unwrap_or_default();
        self.controller.advance(Phase::Stopped);
        info!(self.log, "phase"; "phase" => "stopped", "reason" => why,
            "left_open" => left_open.len(), "elapsed_ms" => elapsed.as_millis() as u64);
        let outcome = StopOutcome {
            exit_code: self.exit_code,
            left_open,
            elapsed,
        };
        for w in self.waiters.drain(..) {
            let _ = w.send(outcome.clone());
        }
        self.outcome = Some(outcome);
        if self.stop_system {
            System::current().stop_with_code(self.exit_code);
        }
    }

    fn listen_for_signals(&mut self, ctx: &mut Context<Self>) {
        let streams = match self.signal_streams.take() {
            Some(streams) => streams,
            None => install_signal_streams(&self.log),
        };
        for (mut stream, signo) in streams {
            let me = ctx.address();
            ctx.spawn(
                async move {
                    while stream.recv().await.is_some() {
                        me.do_send(SignalReceived { signal: signo });
                    }
                }
                .into_actor(self),
            );
        }
    }
}

/// Registers SIGTERM and SIGINT with the runtime: from here on they are
/// queued for the streams instead of killing the process. A failure is
/// logged; the service then stops only by [`BeginShutdown`].
fn install_signal_streams(log: &Logger) -> Vec<(Signal, i32)> {
    let mut streams = Vec::with_capacity(2);
    for (kind, signo) in [
        (SignalKind::terminate(), libc::SIGTERM),
        (SignalKind::interrupt(), libc::SIGINT),
    ] {
        match signal(kind) {
            Ok(stream) => streams.push((stream, signo)),
            Err(e) => {
                error!(log, "cannot listen for a signal; stop with a message instead";
                    "signal" => signal_name(signo), "error" => %e);
            }
        }
    }
    streams
}

impl Actor for ShutdownCoordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        if self.signals {
            self.listen_for_signals(ctx);
        }
        debug!(self.log, "shutdown coordinator started"; "signals" => self.signals);
    }
}

impl Handler<EndLameDuck> for ShutdownCoordinator {
    type Result = ();

    fn handle(&mut self, _msg: EndLameDuck, ctx: &mut Self::Context) {
        debug!(self.log, "end lame duck requested"; "phase" => %self.phase());
        if self.phase() == Phase::LameDuck {
            self.enter_draining(ctx, "lame duck ended");
        }
    }
}

impl Handler<Fatal> for ShutdownCoordinator {
    type Result = ();

    fn handle(&mut self, msg: Fatal, ctx: &mut Self::Context) {
        error!(self.log, "fatal error: the service stops"; "reason" => &msg.reason);
        self.exit_code = 1;
        self.begin(ctx, "fatal error");
    }
}

impl Handler<BeginShutdown> for ShutdownCoordinator {
    type Result = ();

    fn handle(&mut self, _msg: BeginShutdown, ctx: &mut Self::Context) {
        debug!(self.log, "begin shutdown requested");
        self.begin(ctx, "message");
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "signal",
    }
}

impl Handler<SignalReceived> for ShutdownCoordinator {
    type Result = ();

    fn handle(&mut self, msg: SignalReceived, ctx: &mut Self::Context) {
        let name = signal_name(msg.signal);
        debug!(self.log, "signal received"; "signal" => name);
        if self.began.is_none() {
            self.begin(ctx, name);
        } else if self.phase() == Phase::LameDuck {
            info!(self.log, "second signal during the lame duck: draining now"; "signal" => name);
            self.enter_draining(ctx, name);
        } else if self.phase() < Phase::Stopped {
            let code = 128 + msg.signal;
            error!(self.log, "second signal during shutdown: forcing exit";
                "signal" => name, "exit_code" => code, "phase" => %self.phase());
            (self.force_exit)(code);
        }
    }
}

impl Handler<WaitStopped> for ShutdownCoordinator {
    type Result = ResponseFuture<StopOutcome>;

    fn handle(&mut self, _msg: WaitStopped, _ctx: &mut Self::Context) -> Self::Result {
        debug!(self.log, "wait stopped");
        if let Some(outcome) = self.outcome.clone() {
            return Box::pin(async move { outcome });
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push(tx);
        Box::pin(async move {
            // The sender only drops unanswered if the actor dies first:
            // report that as an unclean stop.
            rx.await.unwrap_or(StopOutcome {
                exit_code: 1,
                left_open: Vec::new(),
                elapsed: Duration::ZERO,
            })
        })
    }
}

impl Handler<GetPhase> for ShutdownCoordinator {
    type Result = MessageResult<GetPhase>;

    fn handle(&mut self, _msg: GetPhase, _ctx: &mut Self::Context) -> Self::Result {
        debug!(self.log, "get phase");
        MessageResult(self.phase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::ConnectionRegistry;

    fn coordinator(drain: Duration) -> (ShutdownCoordinator, RegistryHandle) {
        let registry = ConnectionRegistry::builder().build().unwrap();
        let handle = registry.handle();
        let c = ShutdownCoordinator::builder(handle.clone())
            .handle_signals(false)
            .stop_system(false)
            .drain_grace(drain)
            .abort_grace(Duration::from_secs(60))
            .build();
        (c, handle)
    }

    #[actix::test]
    async fn many_waiters_get_the_same_outcome_before_and_after_the_stop() {
        let (c, registry) = coordinator(Duration::from_secs(60));
        let handle = c.handle();
        let addr = c.start();
        let guard = registry.new_shard().register(&registry.kind("p", "l"));
        let early: Vec<_> = (0..5).map(|_| addr.send(WaitStopped)).collect();
        addr.send(BeginShutdown).await.unwrap();
        assert_eq!(addr.send(GetPhase).await.unwrap(), Phase::Draining);
        assert_eq!(handle.phase(), Phase::Draining);
        drop(guard); // the last connection closes: the rest goes at once
        for w in early {
            let outcome = w.await.unwrap();
            assert_eq!(outcome.exit_code, 0);
            assert!(outcome.left_open.is_empty());
        }
        assert_eq!(handle.phase(), Phase::Stopped);
        let late = addr.send(WaitStopped).await.unwrap();
        assert_eq!(late.exit_code, 0);
        assert!(registry.is_shut_down(), "Aborting shut the registry down");
    }

    #[actix::test]
    async fn a_signal_after_the_stop_does_not_force() {
        let forced = Arc::new(std::sync::Mutex::new(0));
        let f = forced.clone();
        let (c, _registry) = coordinator(Duration::from_secs(60));
        let c = ShutdownCoordinator {
            force_exit: Arc::new(move |_| *f.lock().unwrap() += 1),
            ..c
        };
        let addr = c.start();
        addr.send(SignalReceived {
            signal: libc::SIGTERM,
        })
        .await
        .unwrap();
        assert_eq!(
            addr.send(GetPhase).await.unwrap(),
            Phase::Stopped,
            "idle: stopped at once"
        );
        addr.send(SignalReceived {
            signal: libc::SIGTERM,
        })
        .await
        .unwrap();
        assert_eq!(*forced.lock().unwrap(), 0);
    }

    /// Paused-time durations: tokio timers round up to the millisecond.
    fn assert_about(elapsed: Duration, expected: Duration, what: &str) {
        assert!(
            elapsed >= expected && elapsed <= expected + Duration::from_millis(10),
            "{what}: {elapsed:?}, expected {expected:?}"
        );
    }

    fn with_lame_duck(
        lame_duck: Duration,
        forced: Arc<std::sync::Mutex<Vec<i32>>>,
    ) -> (ShutdownCoordinator, RegistryHandle) {
        let registry = ConnectionRegistry::builder().build().unwrap();
        let handle = registry.handle();
        let c = ShutdownCoordinator::builder(handle.clone())
            .handle_signals(false)
            .stop_system(false)
            .lame_duck(lame_duck)
            .drain_grace(Duration::from_secs(3))
            .abort_grace(Duration::from_secs(1))
            .on_force_exit(move |code| forced.lock().unwrap().push(code))
            .build();
        (c, handle)
    }

    #[actix::test]
    async fn lame_duck_serves_until_it_ends_then_drains_and_the_stop_is_bounded() {
        tokio::time::pause();
        let forced = Arc::default();
        let (c, registry) = with_lame_duck(Duration::from_secs(5), Arc::clone(&forced));
        let handle = c.handle();
        let addr = c.start();
        // A connection that never closes, so every grace runs in full.
        let _guard = registry.new_shard().register(&registry.kind("p", "l"));
        let began = tokio::time::Instant::now();
        addr.send(BeginShutdown).await.unwrap();
        assert_eq!(handle.phase(), Phase::LameDuck);
        assert!(handle.is_shutting_down() && !handle.is_draining());
        assert!(!registry.is_shut_down());

        handle.draining().await;
        assert_about(
            began.elapsed(),
            Duration::from_secs(5),
            "draining after the lame duck",
        );
        let outcome = addr.send(WaitStopped).await.unwrap();
        assert_about(
            began.elapsed(),
            Duration::from_secs(5 + 3 + 1),
            "bounded by lame duck + drain grace + abort grace",
        );
        assert_eq!(outcome.exit_code, 0);
        assert_eq!(outcome.left_open.len(), 1);
        assert!(forced.lock().unwrap().is_empty());
    }

    #[actix::test]
    async fn a_second_signal_in_the_lame_duck_drains_and_a_third_forces() {
        tokio::time::pause();
        let forced = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, registry) = with_lame_duck(Duration::from_secs(60), Arc::clone(&forced));
        let handle = c.handle();
        let addr = c.start();
        let _guard = registry.new_shard().register(&registry.kind("p", "l"));
        let term = SignalReceived {
            signal: libc::SIGTERM,
        };
        let began = tokio::time::Instant::now();
        addr.send(term).await.unwrap();
        assert_eq!(addr.send(GetPhase).await.unwrap(), Phase::LameDuck);
        addr.send(BeginShutdown).await.unwrap();
        assert_eq!(handle.phase(), Phase::LameDuck, "a message does not end it");

        addr.send(term).await.unwrap();
        assert_eq!(addr.send(GetPhase).await.unwrap(), Phase::Draining);
        assert_eq!(began.elapsed(), Duration::ZERO, "at once");
        assert!(forced.lock().unwrap().is_empty(), "no forced exit");

        addr.send(term).await.unwrap();
        assert_eq!(*forced.lock().unwrap(), [128 + libc::SIGTERM]);

        let outcome = addr.send(WaitStopped).await.unwrap();
        assert_about(
            began.elapsed(),
            Duration::from_secs(3 + 1),
            "the lame duck is over",
        );
        assert_eq!(outcome.exit_code, 0);
    }

    #[actix::test]
    async fn end_lame_duck_moves_on_and_is_ignored_elsewhere() {
        tokio::time::pause();
        let (c, _registry) = with_lame_duck(Duration::from_secs(60), Arc::default());
        let addr = c.start();
        addr.send(EndLameDuck).await.unwrap();
        assert_eq!(addr.send(GetPhase).await.unwrap(), Phase::Running);
        addr.send(BeginShutdown).await.unwrap();
        assert_eq!(addr.send(GetPhase).await.unwrap(), Phase::LameDuck);
        addr.send(EndLameDuck).await.unwrap();
        assert_eq!(
            addr.send(GetPhase).await.unwrap(),
            Phase::Stopped,
            "idle: through draining to stopped at once"
        );
    }
}
