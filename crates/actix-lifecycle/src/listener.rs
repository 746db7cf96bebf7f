//! The `ListenerActor`: pulls its socket from the broker, accepts, registers
//! each connection and hands it to the protocol handler.

mod accept;
mod conn;
mod proxy;

use std::rc::Rc;
use std::sync::Arc;

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, ArbiterHandle, AsyncContext, Context, Handler,
    Message, MessageResult, SpawnHandle, WrapFuture,
};
use lifecycle_handoff::{ListenAddress, PassedListener};
use slog::{debug, error, info, o, warn, Logger};

pub use conn::{Accepted, Conn, ConnHandler, ConnParts, PeerAddr, Stream};
pub use proxy::{
    ProxyProtocol, ProxyVersion, TrustedNetwork, DEFAULT_PROXY_DEADLINE, DEFAULT_PROXY_MAX_HEADER,
};

use crate::broker::{ClaimListener, FdBroker, TakeListener};
use crate::error::{BrokerError, ListenerError};
use crate::phase::{Phase, PhaseController, ShutdownHandle};
use crate::registry::{ConnKind, Limits, RegistryHandle, RegistryShard};
use crate::shutdown::{Fatal, ShutdownCoordinator};
pub(crate) use accept::check_listener;
use accept::{open_reserve, AcceptLoop, Acceptor, Counters, Server};

pub use accept::{ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_MIN};

/// Stop accepting now. Replies with how many connections were accepted.
/// Closes the listening socket; accepted connections are not affected.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "u64")]
pub struct StopAccepting;

/// Ask a listener what it serves and how it fares.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "ListenerInfo")]
pub struct GetListenerInfo;

/// The reply to [`GetListenerInfo`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerInfo {
    /// The listener's name.
    pub name: String,
    /// The protocol label.
    pub protocol: String,
    /// The address the socket is bound to, once taken from the broker.
    pub address: Option<ListenAddress>,
    /// True while the accept loop runs.
    pub accepting: bool,
    /// Connections accepted so far.
    pub accepted: u64,
    /// Accept errors seen so far (each backed off or retried).
    pub accept_errors: u64,
}

/// How a listener started: the address it serves, or why it could not.
pub(crate) type StartReport = tokio::sync::oneshot::Sender<Result<ListenAddress, ListenerError>>;

/// What a listener's failure does to the service (see
/// [`ListenerBuilder::on_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnFailure {
    /// Stop the whole lifecycle with exit status 1 (a [`Fatal`] to the
    /// coordinator): a service missing a listener does not run silently.
    #[default]
    StopLifecycle,
    /// Log the error and let the service run without this listener.
    LogOnly,
}

/// Builds a [`ListenerActor`].
#[must_use]
pub struct ListenerBuilder {
    name: String,
    protocol: String,
    broker: Addr<FdBroker>,
    registry: RegistryHandle,
    shutdown: ShutdownHandle,
    handler: ConnHandler,
    log: Logger,
    arbiters: Vec<ArbiterHandle>,
    stop_at: Phase,
    limits: Option<Limits>,
    proxy: Option<ProxyProtocol>,
    coordinator: Option<Addr<ShutdownCoordinator>>,
    on_failure: OnFailure,
    report: Option<StartReport>,
}

impl std::fmt::Debug for ListenerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerBuilder")
            .field("name", &self.name)
            .field("protocol", &self.protocol)
            .field("arbiters", &self.arbiters.len())
            .field("stop_at", &self.stop_at)
            .field("limits", &self.limits)
            .field("proxy", &self.proxy)
            .finish()
    }
}

impl ListenerBuilder {
    /// The protocol label of its connections (the metrics' and logs'
    /// `protocol`). Default: the listener's name.
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocol = protocol.into();
        self
    }

    /// What serves each connection. Default: a handler that closes every
    /// connection at once (the listener only accepts and counts).
    pub fn handler(mut self, handler: ConnHandler) -> Self {
        self.handler = handler;
        self
    }

    /// The registry its connections are tracked in (and admitted under the
    /// limits of). Default: a registry of this listener's own, without
    /// metrics, that nothing else sees: set the service's.
    pub fn registry(mut self, registry: RegistryHandle) -> Self {
        self.registry = registry;
        self
    }

    /// The shutdown phases it follows (it stops accepting at
    /// [`stop_accepting_at`](Self::stop_accepting_at), its connections see
    /// them through [`Conn::shutdown`]). Default: a handle that stays
    /// `Running`, so the listener accepts until [`StopAccepting`].
    pub fn shutdown(mut self, shutdown: ShutdownHandle) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// This listener's own admission limits (checked where each connection
    /// registers; see [`RegistryShard::admit`]). Default: the registry's
    /// ([`RegistryBuilder::limits`](crate::RegistryBuilder::limits)).
    /// Change them at run time with [`SetLimits`](crate::SetLimits). A
    /// refused connection gets the handler's
    /// [`on_refused`](ConnHandler::on_refused) reply and is closed; it is
    /// checked before it is registered with the arbiter's reactor, so a
    /// flood costs `accept4`, `send` and `close` per refused connection
    /// (behind a PROXY-protocol listener the header is read first, so
    /// there it is registered).
    ///
    /// ```
    /// # fn doc(lifecycle: &actix_lifecycle::Lifecycle) -> Result<(), actix_lifecycle::LimitsError> {
    /// use actix_lifecycle::{ConnHandler, Limits};
    ///
    /// let handler = ConnHandler::new(|conn| async move { drop(conn) })
    ///     .on_refused(|_| b"421 4.7.0 mx.example.org too many connections, try again later\r\n".to_vec());
    /// lifecycle
    ///     .listener("mx", "smtp", handler)
    ///     .limits(Limits::none().max_connections(2000).max_per_address(20).rate_per_address("60/min".parse()?))
    ///     .start();
    /// # Ok(()) }
    /// ```
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Every connection starts with a PROXY protocol header (v1, v2 or
    /// either) naming the real client, sent by a trusted load balancer.
    /// Default: off, the socket's peer is the client.
    ///
    /// After the accept, in the connection's own task (a slow header never
    /// holds up the accept loop), the listener closes a connection from
    /// outside the trusted networks, then reads the header within its
    /// deadline and size bound, consuming exactly its bytes, and only then
    /// admits the connection under [`limits`](Self::limits) with the
    /// client's address. That address is the [`Conn::peer`] the handler
    /// sees and the `peer` of the logs. A connection refused here is closed
    /// without a word and counted (`proxy_*` reasons of [`RefuseReason`](crate::RefuseReason)).
    ///
    /// ```
    /// # fn doc(lifecycle: &actix_lifecycle::Lifecycle) -> Result<(), actix_lifecycle::ProxyConfigError> {
    /// use actix_lifecycle::{ConnHandler, ProxyProtocol, ProxyVersion};
    ///
    /// let handler = ConnHandler::new(|conn| async move {
    ///     println!("client {}", conn.peer()); // the address HAProxy saw
    /// });
    /// lifecycle
    ///     .listener("mx", "smtp", handler)
    ///     .proxy_protocol(ProxyProtocol::new(ProxyVersion::V2).trust("127.0.0.1/32".parse()?))
    ///     .start();
    /// # Ok(()) }
    /// ```
    pub fn proxy_protocol(mut self, proxy: ProxyProtocol) -> Self {
        self.proxy = Some(proxy);
        self
    }

    /// What happens when this listener cannot take or adopt its socket,
    /// or its accept loop fails. Default [`OnFailure::StopLifecycle`]
    /// for a listener made by [`Lifecycle::listener`](crate::Lifecycle::listener)
    /// (a [`ListenerActor::builder`] without a coordinator only logs).
    pub fn on_failure(mut self, on_failure: OnFailure) -> Self {
        self.on_failure = on_failure;
        self
    }

    pub(crate) fn coordinator(mut self, coordinator: Addr<ShutdownCoordinator>) -> Self {
        self.coordinator = Some(coordinator);
        self
    }

    pub(crate) fn report(mut self, report: StartReport) -> Self {
        self.report = Some(report);
        self
    }

    /// Logs go to `log` (keys `listener`, `protocol`). Default: discarded.
    pub fn logger(mut self, log: Logger) -> Self {
        self.log = log;
        self
    }

    /// Serve connections round-robin on these arbiters (each gets its own
    /// registry shard). Default: none, every connection is served on the
    /// listener's own arbiter. An arbiter that stops leaves the rotation
    /// (logged once; the connection goes to the next one); with none left,
    /// connections are served on the listener's own arbiter.
    pub fn arbiters(mut self, arbiters: Vec<ArbiterHandle>) -> Self {
        self.arbiters = arbiters;
        self
    }

    /// The phase at which the listener stops accepting: [`Phase::Draining`]
    /// (refuse connections as soon as shutdown starts) or
    /// [`Phase::Aborting`] (keep accepting while draining so handlers can
    /// answer "shutting down", e.g. SMTP 421). Default `Aborting`; `Running`
    /// is taken as `Draining`.
    pub fn stop_accepting_at(mut self, phase: Phase) -> Self {
        self.stop_at = phase.max(Phase::Draining);
        self
    }

    /// The actor, not started. Claims its listener at the broker (see
    /// [`ClaimListener`]) so that a
    /// [`CloseUnclaimed`](crate::CloseUnclaimed) sent from now on leaves it
    /// for this actor.
    pub fn build(self) -> ListenerActor {
        self.broker.do_send(ClaimListener::new(self.name.clone()));
        let fatal = match self.on_failure {
            OnFailure::StopLifecycle => self.coordinator,
            OnFailure::LogOnly => None,
        };
        let kind = self.registry.kind(&self.protocol, &self.name);
        if let Some(limits) = self.limits {
            self.registry.set_limits(&kind, Some(limits));
        }
        let log = self.log.new(o!(
            "actor" => "listener",
            "listener" => self.name.clone(),
            "protocol" => self.protocol.clone()
        ));
        let remote = self
            .arbiters
            .into_iter()
            .map(|a| (a, self.registry.new_shard()))
            .collect();
        ListenerActor {
            name: Arc::from(self.name),
            protocol: Arc::from(self.protocol),
            broker: self.broker,
            local_shard: self.registry.new_shard(),
            kind,
            shutdown: self.shutdown,
            handler: self.handler,
            log,
            remote: Rc::new(remote),
            stop_at: self.stop_at,
            counters: Rc::new(Counters::default()),
            accept_loop: None,
            address: None,
            proxy: self.proxy.map(Arc::new),
            report: self.report,
            fatal,
        }
    }

    /// Builds and starts the actor on the current arbiter.
    pub fn start(self) -> Addr<ListenerActor> {
        self.build().start()
    }

    /// Builds and starts the actor on `arbiter` (its accept loop and, unless
    /// [`arbiters`](Self::arbiters) says otherwise, its connections run there).
    pub fn start_in(self, arbiter: &ArbiterHandle) -> Addr<ListenerActor> {
        // Claimed here, in order with what this thread sends the broker next.
        self.broker.do_send(ClaimListener::new(self.name.clone()));
        ListenerActor::start_in_arbiter(arbiter, move |_| self.build())
    }
}

/// Serves one listener: on start it takes its socket from the
/// [`FdBroker`] by name (an unknown or already taken name is logged and
/// stops the actor), accepts connections (TCP or Unix), registers each on
/// the registry shard of the arbiter that serves it, and hands a [`Conn`]
/// to the [`ConnHandler`].
///
/// Accept errors never spin a core: `EMFILE`, `ENFILE`, `ENOBUFS` and
/// `ENOMEM` back off exponentially from [`ACCEPT_BACKOFF_MIN`] to
/// [`ACCEPT_BACKOFF_MAX`], logged once per burst with a count; transient
/// errors (`ECONNABORTED`, ...) are retried at once.
///
/// Out of descriptors, clients are answered rather than left in the
/// backlog: the loop keeps one reserve descriptor (`/dev/null`); at
/// `EMFILE`/`ENFILE` it closes it, accepts the waiting connection, writes
/// the handler's busy reply ([`ConnHandler::on_refused`] with
/// [`RefuseReason::Descriptors`](crate::RefuseReason)), closes it and
/// re-opens the reserve. It backs off only when that cannot be done.
///
/// Each connection is admitted under the listener's [`Limits`]
/// ([`ListenerBuilder::limits`]) before it is registered; a refused one is
/// answered the same way and never reaches the handler. With the PROXY
/// protocol ([`ListenerBuilder::proxy_protocol`]) the header is read first,
/// in the connection's task, and admission counts the client it names.
pub struct ListenerActor {
    name: Arc<str>,
    protocol: Arc<str>,
    broker: Addr<FdBroker>,
    local_shard: RegistryShard,
    kind: ConnKind,
    shutdown: ShutdownHandle,
    handler: ConnHandler,
    log: Logger,
    remote: Rc<Vec<(ArbiterHandle, RegistryShard)>>,
    stop_at: Phase,
    counters: Rc<Counters>,
    accept_loop: Option<SpawnHandle>,
    address: Option<ListenAddress>,
    proxy: Option<Arc<ProxyProtocol>>,
    report: Option<StartReport>,
    fatal: Option<Addr<ShutdownCoordinator>>,
}

impl std::fmt::Debug for ListenerActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerActor")
            .field("name", &self.name)
            .field("protocol", &self.protocol)
            .field("accepting", &self.accept_loop.is_some())
            .finish()
    }
}

impl ListenerActor {
    /// A builder for the listener `name` (as in the inventory) whose
    /// socket `broker` holds. The rest has defaults: set at least a
    /// [`handler`](ListenerBuilder::handler). Inside a [`Lifecycle`](crate::Lifecycle),
    /// [`Lifecycle::listener`](crate::Lifecycle::listener) fills in its
    /// broker, registry, shutdown handle and logger.
    ///
    /// ```
    /// use actix::Actor;
    /// use actix_lifecycle::{
    ///     ConnHandler, ConnectionRegistry, FdBroker, GetListenerInfo, ListenerActor, PhaseController,
    /// };
    /// use lifecycle_handoff::{Inventory, ListenerSpec, PassedListener};
    ///
    /// # actix::System::new().block_on(async {
    /// let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let spec = ListenerSpec::tcp("echo", socket.local_addr().unwrap());
    /// let mut inventory = Inventory::default();
    /// inventory.listeners.push(PassedListener { spec, fd: socket.into() });
    /// let broker = FdBroker::new(inventory, slog::Logger::root(slog::Discard, slog::o!())).start();
    /// let registry = ConnectionRegistry::builder().build().unwrap();
    /// let phases = PhaseController::new();
    /// let listener = ListenerActor::builder("echo", broker)
    ///     .protocol("echo")
    ///     .registry(registry.handle())
    ///     .shutdown(phases.handle())
    ///     .handler(ConnHandler::new(|conn| async move { drop(conn) }))
    ///     .start();
    /// let info = listener.send(GetListenerInfo).await.unwrap();
    /// assert!(info.accepting && info.protocol == "echo");
    /// # });
    /// ```
    pub fn builder(name: impl Into<String>, broker: Addr<FdBroker>) -> ListenerBuilder {
        let name = name.into();
        ListenerBuilder {
            protocol: name.clone(),
            name,
            broker,
            registry: RegistryHandle::new(Logger::root(slog::Discard, o!())),
            shutdown: PhaseController::new().handle(),
            handler: ConnHandler::new(|conn| async move { drop(conn) }),
            log: Logger::root(slog::Discard, o!()),
            arbiters: Vec::new(),
            stop_at: Phase::Aborting,
            limits: None,
            proxy: None,
            coordinator: None,
            on_failure: OnFailure::StopLifecycle,
            report: None,
        }
    }

    /// Logs `e`, tells whoever waits for the start, stops the lifecycle
    /// (unless told otherwise) and stops this actor.
    fn fail(&mut self, e: ListenerError, ctx: &mut Context<Self>) {
        error!(self.log, "listener failed; it stops"; "error" => %e);
        if let Some(fatal) = &self.fatal {
            fatal.do_send(Fatal {
                reason: e.to_string(),
            });
        }
        if let Some(report) = self.report.take() {
            let _ = report.send(Err(e));
        }
        ctx.stop();
    }

    fn serve(
        &mut self,
        passed: PassedListener,
        ctx: &mut Context<Self>,
    ) -> Result<(), ListenerError> {
        let (acceptor, address) = Acceptor::adopt(passed)?;
        info!(self.log, "listening"; "address" => %address);
        if let Some(report) = self.report.take() {
            let _ = report.send(Ok(address.clone()));
        }
        self.address = Some(address);
        let server = |shard: &RegistryShard| {
            Server::new(
                shard.clone(),
                self.kind.clone(),
                self.handler.clone(),
                self.shutdown.clone(),
                self.log.clone(),
                self.proxy.clone(),
            )
        };
        let mut remote = Vec::new();
        for (arbiter, shard) in self.remote.iter() {
            match server(shard).spawn_on(arbiter) {
                Some(r) => remote.push(r),
                None => warn!(
                    self.log,
                    "an arbiter given to this listener is gone; skipped"
                ),
            }
        }
        let reserve = open_reserve();
        if reserve.is_none() {
            warn!(
                self.log,
                "cannot open /dev/null as the reserve descriptor: \
                out of descriptors, waiting clients are not answered busy"
            );
        }
        let accept_loop = AcceptLoop {
            acceptor,
            reserve,
            local: server(&self.local_shard),
            remote,
            next_remote: 0,
            log: self.log.clone(),
            counters: Rc::clone(&self.counters),
        };
        let handle = ctx.spawn(accept_loop.run().into_actor(self).map(|res, act, ctx| {
            act.accept_loop = None;
            if let Err(source) = res {
                let e = ListenerError::Accept {
                    name: act.name.to_string(),
                    source,
                };
                act.fail(e, ctx);
            }
        }));
        self.accept_loop = Some(handle);

        // Stop accepting at the configured phase.
        let shutdown = self.shutdown.clone();
        let stop_at = self.stop_at;
        let me = ctx.address();
        actix::spawn(async move {
            if stop_at <= Phase::Draining {
                shutdown.draining().await;
            } else {
                shutdown.aborting().await;
            }
            me.do_send(StopAccepting);
        });
        Ok(())
    }
}

impl Actor for ListenerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let request = self.broker.send(TakeListener::new(&*self.name));
        ctx.wait(request.into_actor(self).map(|res, act, ctx| {
            let source = match res {
                Ok(Ok(passed)) => match act.serve(passed, ctx) {
                    Ok(()) => return,
                    Err(e) => return act.fail(e, ctx),
                },
                Ok(Err(source)) => source,
                Err(_) => BrokerError::Gone,
            };
            let e = ListenerError::Broker {
                name: act.name.to_string(),
                source,
            };
            act.fail(e, ctx);
        }));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        debug!(self.log, "listener actor stopped"; "accepted" => self.counters.accepted.get());
    }
}

impl Handler<StopAccepting> for ListenerActor {
    type Result = u64;

    fn handle(&mut self, _msg: StopAccepting, ctx: &mut Self::Context) -> u64 {
        debug!(self.log, "stop accepting");
        if let Some(handle) = self.accept_loop.take() {
            ctx.cancel_future(handle);
            self.counters.end_burst(&self.log);
            info!(self.log, "stopped accepting"; "accepted" => self.counters.accepted.get());
        }
        self.counters.accepted.get()
    }
}

impl Handler<GetListenerInfo> for ListenerActor {
    type Result = MessageResult<GetListenerInfo>;

    fn handle(&mut self, _msg: GetListenerInfo, _ctx: &mut Self::Context) -> Self::Result {
        debug!(self.log, "listener info");
        MessageResult(ListenerInfo {
            name: self.name.to_string(),
            protocol: self.protocol.to_string(),
            address: self.address.clone(),
            accepting: self.accept_loop.is_some(),
            accepted: self.counters.accepted.get(),
            accept_errors: self.counters.errors.get(),
        })
    }
}
