//! The shutdown coordinator: turns SIGTERM/SIGINT (or a message) into the
//! phases `Running → LameDuck → Draining → Aborting → Stopped`, bounded by
//! the lame duck and two graces.

mod builder;
mod messages;
mod signals;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, MessageResult, ResponseFuture, System,
    WrapFuture,
};
use actix_rt::signal::unix::Signal;
use futures_util::future::{select, Either};
use slog::{debug, error, info, warn, Logger};
use tokio::sync::oneshot;

use builder::ForceExit;
pub(crate) use builder::{grace_setters, Graces};
pub use builder::{ShutdownBuilder, DEFAULT_ABORT_GRACE, DEFAULT_DRAIN_GRACE, DEFAULT_LAME_DUCK};
pub use messages::{
    BeginShutdown, EndLameDuck, Fatal, GetPhase, SignalReceived, StopOutcome, WaitStopped,
};
use signals::{install_signal_streams, signal_name};

use crate::phase::{Phase, PhaseController, ShutdownHandle};
use crate::registry::RegistryHandle;

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
    graces: Graces,
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
            .field("graces", &self.graces)
            .finish()
    }
}

impl ShutdownCoordinator {
    /// A builder for a coordinator that shuts down `registry`.
    pub fn builder(registry: RegistryHandle) -> ShutdownBuilder {
        ShutdownBuilder::new(registry)
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
        if self.graces.lame_duck.is_zero() {
            self.enter_draining(ctx, why);
            return;
        }
        self.controller.advance(Phase::LameDuck);
        info!(self.log, "phase"; "phase" => Phase::LameDuck.as_str(), "trigger" => why,
            "live" => self.registry.live(), "lame_duck_ms" => self.graces.lame_duck.as_millis() as u64);
        ctx.run_later(self.graces.lame_duck, |act, ctx| {
            act.enter_draining(ctx, "lame duck over")
        });
    }

    fn enter_draining(&mut self, ctx: &mut Context<Self>, why: &str) {
        if !self.controller.advance(Phase::Draining) {
            return;
        }
        let live = self.registry.live();
        info!(self.log, "phase"; "phase" => Phase::Draining.as_str(), "trigger" => why,
            "live" => live, "drain_grace_ms" => self.graces.drain.as_millis() as u64);
        if live == 0 {
            self.enter_aborting(ctx, "nothing open");
            return;
        }
        self.wait_then(ctx, self.graces.drain, |act, ctx, why| {
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
            "live" => live, "abort_grace_ms" => self.graces.abort.as_millis() as u64);
        if live == 0 {
            self.enter_stopped(ctx, "nothing open");
            return;
        }
        self.wait_then(ctx, self.graces.abort, |act, ctx, why| {
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
            rx.await.unwrap_or(StopOutcome::without_stop(1))
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
