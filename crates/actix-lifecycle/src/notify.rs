//! The `SystemdNotifier` actor: readiness, status, stopping and watchdog
//! notifications to the service manager (`sd_notify(3)`). The synchronous
//! sender underneath it, the parsing of `NOTIFY_SOCKET`, `WATCHDOG_USEC` and
//! `WATCHDOG_PID`, and their error are lifecycle-handoff's
//! ([`Notifier`](lifecycle_handoff::Notifier),
//! re-exported here as [`NotifySender`]; [`NotifyEnv`]; [`NotifyError`]),
//! shared with the privileged parent.

mod builder;
mod messages;
mod readiness;
mod status;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, MessageResult, ResponseFuture,
    WrapFuture,
};
use slog::{debug, error, info, warn, Logger};
use tokio::sync::oneshot;

pub use builder::NotifierBuilder;
use builder::Watched;
pub use lifecycle_handoff::{Notifier as NotifySender, NotifyEnv, NotifyError};
pub use messages::{GetNotifierState, HandedOver, NotifierState, SendMainPid, WaitReady};

use crate::lifecycle::Lifecycle;

/// Default least time between two `STATUS=` notifications.
const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Sends from the actor never wait for room in the service manager's
/// queue: a stuck manager must not stall the arbiter (with a short watchdog
/// period, waiting sends would occupy it completely). A full queue drops a
/// `WATCHDOG=1` or `STATUS=` (the next one follows), while `READY=1` and
/// `STOPPING=1` are kept in order and retried.
const ACTOR_SEND_TIMEOUT: Duration = Duration::ZERO;
/// How often `READY=1`/`STOPPING=1` are retried while the queue is full.
const OUTBOX_RETRY: Duration = Duration::from_millis(20);
/// Retries before a `READY=1`/`STOPPING=1` is given up (5 s).
const OUTBOX_MAX_RETRIES: u32 = 250;
/// Watchdog pings are never closer together than this.
const MIN_WATCHDOG_PERIOD: Duration = Duration::from_millis(1);

/// A notification that must not be lost to a momentarily full queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Note {
    Ready,
    Stopping,
}

impl Note {
    fn what(self) -> &'static str {
        match self {
            Note::Ready => "READY=1",
            Note::Stopping => "STOPPING=1",
        }
    }

    fn send(self, sender: &NotifySender) -> Result<(), NotifyError> {
        match self {
            Note::Ready => sender.ready(),
            Note::Stopping => sender.stopping(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Readiness {
    Waiting,
    Ready,
    Never,
}

/// Tells the service manager (systemd, `Type=notify`) how a [`Lifecycle`]
/// fares, when `NOTIFY_SOCKET` is set; without it nothing is sent and
/// nothing fails.
///
/// * `READY=1` once every listener accepts: every listener of the
///   lifecycle's inventory was taken from the [`FdBroker`](crate::FdBroker) (served, or
///   closed as unclaimed) and every [`ListenerActor`](crate::ListenerActor) given to the builder
///   answers [`GetListenerInfo`](crate::GetListenerInfo) with `accepting`. Never, if shutdown
///   begins first or a listener dies before it accepts (logged).
/// * `STATUS=` with the phase and live connections per listener
///   (`running: 3 connections (imap 1, smtp 2)`), at most once per
///   status interval (1 s) and only when the text changed.
/// * `STOPPING=1` when the shutdown begins (the lame duck, else draining).
/// * `WATCHDOG=1` at half of `WATCHDOG_USEC`, when it is set for this
///   process, from an interval on this actor's arbiter: if the arbiter is
///   stuck, the pings stop and the service manager restarts the service.
/// * `MAINPID=` on request ([`SendMainPid`]).
///
/// Sends never block the arbiter: when the service manager's queue is
/// full, a ping or a status is dropped (counted, logged once per run of
/// failures) and `READY=1`/`STOPPING=1` are retried in order for up to 5 s.
///
/// The variables are read once, by [`from_env`](Self::from_env), or given
/// explicitly with [`builder`](Self::builder). [`WaitReady`] tells the
/// service itself when it is ready, with or without a service manager.
///
/// ```
/// use actix_lifecycle::{
///     BeginShutdown, ConnHandler, Lifecycle, NotifyEnv, SystemdNotifier, WaitReady,
/// };
/// use lifecycle_handoff::{Inventory, ListenerSpec, PassedListener};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("notify");
/// // Stands in for systemd's notification socket.
/// let systemd = std::os::unix::net::UnixDatagram::bind(&path)?;
///
/// let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
/// let inventory = Inventory {
///     listeners: vec![PassedListener { spec: ListenerSpec::tcp("web", tcp.local_addr()?), fd: tcp.into() }],
///     files: vec![],
/// };
/// actix::System::new().block_on(async move {
///     let lifecycle = Lifecycle::builder(inventory).handle_signals(false).start().unwrap();
///     let web = lifecycle.serve("web", "http", ConnHandler::new(|_conn| async {}));
///     // In a service: SystemdNotifier::from_env(&lifecycle).listener(web).start()
///     let env = NotifyEnv::new().notify_socket(&path);
///     let notifier = SystemdNotifier::builder(&lifecycle, env).listener(web).start();
///     assert!(notifier.send(WaitReady).await.unwrap());
///     lifecycle.coordinator().do_send(BeginShutdown);
/// });
/// let mut buf = [0u8; 256];
/// let n = systemd.recv(&mut buf)?;
/// assert_eq!(&buf[..n], b"READY=1\n");
/// # Ok(())
/// # }
/// ```
pub struct SystemdNotifier {
    sender: Option<NotifySender>,
    watchdog: Option<Duration>,
    watched: Watched,
    log: Logger,
    status_interval: Duration,
    readiness: Readiness,
    ready_waiters: Vec<oneshot::Sender<bool>>,
    outbox: VecDeque<Note>,
    outbox_retries: u32,
    outbox_retry_scheduled: bool,
    handed_over_to: Option<u32>,
    last_status: Option<String>,
    last_status_at: Option<Instant>,
    sent: u64,
    send_errors: u64,
    failing: bool,
    watchdog_pings: u64,
}

impl std::fmt::Debug for SystemdNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemdNotifier")
            .field("socket", &self.sender.as_ref().map(NotifySender::socket))
            .field("watchdog", &self.watchdog)
            .field("readiness", &self.readiness)
            .finish()
    }
}

impl SystemdNotifier {
    /// A builder for `lifecycle` with the variables of this process
    /// (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`), read now.
    pub fn from_env(lifecycle: &Lifecycle) -> NotifierBuilder {
        SystemdNotifier::builder(lifecycle, NotifyEnv::from_process())
    }

    /// A builder for `lifecycle` with the variables given in `env`.
    pub fn builder(lifecycle: &Lifecycle, env: NotifyEnv) -> NotifierBuilder {
        NotifierBuilder::new(lifecycle, env)
    }

    /// Sends with `f` if notifications are on and this process is still
    /// the main one; counts and logs the outcome (the first failure of a
    /// run at warning level, the rest at debug level).
    fn send(&mut self, what: &str, f: impl FnOnce(&NotifySender) -> Result<(), NotifyError>) {
        if self.handed_over_to.is_some() {
            debug!(self.log, "not the main process any more: notification dropped"; "what" => what);
            return;
        }
        let Some(sender) = &self.sender else {
            return;
        };
        match f(sender) {
            Ok(()) => {
                self.sent += 1;
                if self.failing {
                    info!(self.log, "notifications get through again"; "what" => what);
                    self.failing = false;
                }
            }
            Err(e) => {
                self.send_errors += 1;
                if self.failing {
                    debug!(self.log, "notification not sent"; "what" => what, "error" => %e);
                } else {
                    warn!(self.log, "notification not sent"; "what" => what, "error" => %e);
                    self.failing = true;
                }
            }
        }
    }

    /// Queues `note` behind any earlier one and sends what it can.
    fn post(&mut self, ctx: &mut Context<Self>, note: Note) {
        if self.sender.is_none() || self.handed_over_to.is_some() {
            return;
        }
        self.outbox.push_back(note);
        self.flush(ctx);
    }

    /// Sends queued notes in order; on a full queue retries later.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.handed_over_to.is_some() {
            self.outbox.clear();
            return;
        }
        let Some(sender) = &self.sender else {
            self.outbox.clear();
            return;
        };
        while let Some(note) = self.outbox.front().copied() {
            match note.send(sender) {
                Ok(()) => {
                    self.outbox.pop_front();
                    self.outbox_retries = 0;
                    self.sent += 1;
                    if self.failing {
                        info!(self.log, "notifications get through again"; "what" => note.what());
                        self.failing = false;
                    }
                }
                Err(e) if e.is_queue_full() && self.outbox_retries < OUTBOX_MAX_RETRIES => {
                    self.outbox_retries += 1;
                    if !self.outbox_retry_scheduled {
                        self.outbox_retry_scheduled = true;
                        ctx.run_later(OUTBOX_RETRY, |act, ctx| {
                            act.outbox_retry_scheduled = false;
                            act.flush(ctx);
                        });
                    }
                    return;
                }
                Err(e) => {
                    self.outbox.pop_front();
                    self.outbox_retries = 0;
                    self.send_errors += 1;
                    self.failing = true;
                    error!(self.log, "notification not sent"; "what" => note.what(), "error" => %e);
                }
            }
        }
    }

    fn became_ready(&mut self, ctx: &mut Context<Self>, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.readiness = Readiness::Ready;
                info!(self.log, "ready: every listener accepts";
                    "listeners" => self.watched.listeners.len(), "notify" => self.sender.is_some());
                self.post(ctx, Note::Ready);
            }
            Err(why) => {
                self.readiness = Readiness::Never;
                if self.watched.shutdown.is_shutting_down() {
                    info!(self.log, "not ready: {}", why);
                } else {
                    error!(self.log, "not ready: {}", why);
                }
            }
        }
        let ready = self.readiness == Readiness::Ready;
        for waiter in self.ready_waiters.drain(..) {
            let _ = waiter.send(ready);
        }
    }

    fn status_tick(&mut self) {
        if self.sender.is_none() || self.handed_over_to.is_some() {
            return;
        }
        if self
            .last_status_at
            .is_some_and(|at| at.elapsed() < self.status_interval)
        {
            return;
        }
        let line = status::status_line(
            self.watched.shutdown.phase(),
            self.readiness == Readiness::Ready,
            &self.watched.connections.snapshot(),
        );
        if self.last_status.as_deref() == Some(line.as_str()) {
            return;
        }
        self.last_status_at = Some(Instant::now());
        let errors = self.send_errors;
        self.send("STATUS=", |s| s.status(&line));
        if self.send_errors == errors {
            self.last_status = Some(line);
        }
    }
}

impl Actor for SystemdNotifier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        info!(self.log, "service manager notifications";
            "notify_socket" => self.sender.as_ref().map(|s| s.socket().to_owned()),
            "watchdog_ms" => self.watchdog.map(|w| w.as_millis() as u64));

        if let Some(interval) = self.watchdog {
            let period = (interval / 2).max(MIN_WATCHDOG_PERIOD);
            let ping = |act: &mut Self, _: &mut Context<Self>| {
                let sent = act.sent;
                act.send("WATCHDOG=1", NotifySender::watchdog);
                if act.sent > sent {
                    act.watchdog_pings += 1;
                }
            };
            ping(self, ctx);
            ctx.run_interval(period, ping);
        }

        let wait = readiness::wait_until_ready(
            self.watched.broker.clone(),
            self.watched.listeners.clone(),
            self.watched.shutdown.clone(),
            self.log.clone(),
        );
        ctx.spawn(
            wait.into_actor(self)
                .map(|res, act, ctx| act.became_ready(ctx, res)),
        );

        // STOPPING=1 is sent synchronously where the shutdown is observed
        // (the outbox holds it back only while the manager's queue is
        // full): an idle service without a lame duck goes from Draining to
        // Stopped and stops the System in one step, and a further hop (a
        // channel, another task) could be dropped with the runtime.
        let shutdown = self.watched.shutdown.clone();
        ctx.spawn(
            async move { shutdown.shutting_down().await }
                .into_actor(self)
                .map(|(), act, ctx| act.post(ctx, Note::Stopping)),
        );

        if self.sender.is_some() {
            // Ticks several times per interval; status_tick itself keeps
            // the sends at least one interval apart.
            let tick = (self.status_interval / 4).max(Duration::from_millis(1));
            ctx.run_interval(tick, |act, _| act.status_tick());
        }
    }
}

impl Handler<WaitReady> for SystemdNotifier {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, _msg: WaitReady, _ctx: &mut Self::Context) -> Self::Result {
        debug!(self.log, "wait ready");
        match self.readiness {
            Readiness::Ready => Box::pin(async { true }),
            Readiness::Never => Box::pin(async { false }),
            Readiness::Waiting => {
                let (tx, rx) = oneshot::channel();
                self.ready_waiters.push(tx);
                Box::pin(async move { rx.await.unwrap_or(false) })
            }
        }
    }
}

impl Handler<SendMainPid> for SystemdNotifier {
    type Result = Result<(), NotifyError>;

    fn handle(&mut self, msg: SendMainPid, _ctx: &mut Self::Context) -> Self::Result {
        debug!(self.log, "send main pid"; "pid" => msg.pid);
        let Some(sender) = &self.sender else {
            return Ok(());
        };
        if let Some(to) = self.handed_over_to {
            debug!(self.log, "MAINPID= not sent: already handed over"; "to" => to);
            return Ok(());
        }
        match sender.main_pid(msg.pid) {
            Ok(()) => {
                self.sent += 1;
                if msg.pid != std::process::id() {
                    info!(self.log, "main process handed over; this process sends no more notifications";
                        "main_pid" => msg.pid);
                    self.handed_over_to = Some(msg.pid);
                }
                Ok(())
            }
            Err(e) => {
                self.send_errors += 1;
                warn!(self.log, "MAINPID= not sent"; "error" => %e);
                Err(e)
            }
        }
    }
}

impl Handler<HandedOver> for SystemdNotifier {
    type Result = ();

    fn handle(&mut self, msg: HandedOver, _ctx: &mut Self::Context) -> Self::Result {
        if self.handed_over_to.is_none() && self.sender.is_some() {
            info!(self.log, "service handed over; this process sends no more notifications";
                "to" => msg.pid);
        }
        self.handed_over_to.get_or_insert(msg.pid);
    }
}

impl Handler<GetNotifierState> for SystemdNotifier {
    type Result = MessageResult<GetNotifierState>;

    fn handle(&mut self, _msg: GetNotifierState, _ctx: &mut Self::Context) -> Self::Result {
        debug!(self.log, "get notifier state");
        MessageResult(NotifierState {
            notify_socket: self.sender.as_ref().map(|s| s.socket().to_owned()),
            watchdog_interval: self.watchdog,
            ready: self.readiness == Readiness::Ready,
            handed_over_to: self.handed_over_to,
            sent: self.sent,
            send_errors: self.send_errors,
            watchdog_pings: self.watchdog_pings,
            last_status: self.last_status.clone(),
        })
    }
}
