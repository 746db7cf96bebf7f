//! A message-driven test harness: the whole lifecycle on ephemeral ports
//! inside one actix `System`, driven only by messages.
//!
//! Each [`Harness`] is an actor with its own broker, registry, coordinator,
//! listeners and metrics registry, so several run side by side in one
//! process. Drive it with [`Start`], [`Snapshot`](crate::Snapshot),
//! [`BeginShutdown`](crate::BeginShutdown), [`Done`](crate::Done),
//! [`WaitStopped`](crate::WaitStopped) and [`GetPhase`](crate::GetPhase).
//!
//! ```
//! use actix::Actor;
//! use actix_lifecycle::{BeginShutdown, ConnHandler, Done, Harness, Snapshot, Start, WaitStopped};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! actix::System::new().block_on(async {
//!     let echo = ConnHandler::new(|mut conn| async move {
//!         let mut buf = [0u8; 64];
//!         while let Ok(n @ 1..) = conn.read(&mut buf).await {
//!             if conn.write_all(&buf[..n]).await.is_err() {
//!                 break;
//!             }
//!         }
//!     });
//!     let harness = Harness::builder().tcp("echo", "echo", echo).build().start();
//!     let info = harness.send(Start).await.unwrap().unwrap();
//!
//!     let mut client = tokio::net::TcpStream::connect(info.tcp("echo").unwrap()).await.unwrap();
//!     client.write_all(b"ping").await.unwrap();
//!     let mut got = [0u8; 4];
//!     client.read_exact(&mut got).await.unwrap();
//!     assert_eq!(&got, b"ping");
//!     assert_eq!(harness.send(Snapshot).await.unwrap().live, 1);
//!
//!     harness.send(BeginShutdown).await.unwrap();
//!     let outcome = harness.send(WaitStopped).await.unwrap();
//!     assert_eq!(outcome.exit_code, 0);
//!     harness.send(Done).await.unwrap();
//!     assert_eq!(harness.send(Snapshot).await.unwrap().live, 0);
//! });
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use actix::{
    Actor, ActorFutureExt, Addr, Context, Handler, Message, MessageResult, ResponseActFuture,
    ResponseFuture, WrapFuture,
};
use lifecycle_handoff::{Inventory, ListenAddress, ListenerSpec, PassedListener};
use slog::{debug, o, Logger};

use crate::error::{LifecycleError, ListenerError};
use crate::lifecycle::Lifecycle;
use crate::listener::{ConnHandler, GetListenerInfo, ListenerActor};
use crate::phase::Phase;
use crate::registry::{Done, Snapshot};
use crate::shutdown::{grace_setters, BeginShutdown, GetPhase, Graces, StopOutcome, WaitStopped};

/// Bind every listener, start the lifecycle and wait until every listener
/// accepts. Replies with the bound addresses.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "Result<HarnessInfo, LifecycleError>")]
pub struct Start;

/// The reply to [`Start`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HarnessInfo {
    /// Every listener's name and bound address, in declaration order.
    pub addresses: Vec<(String, ListenAddress)>,
    /// The running lifecycle (registry handle, shutdown handle, metrics).
    pub lifecycle: Lifecycle,
}

impl HarnessInfo {
    /// The bound address of listener `name`.
    pub fn address(&self, name: &str) -> Option<&ListenAddress> {
        self.addresses
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    /// The bound TCP address of listener `name`.
    pub fn tcp(&self, name: &str) -> Option<SocketAddr> {
        match self.address(name)? {
            ListenAddress::Tcp(a) => Some(*a),
            ListenAddress::Unix(_) => None,
        }
    }

    /// The socket path of Unix listener `name`.
    pub fn unix(&self, name: &str) -> Option<&Path> {
        match self.address(name)? {
            ListenAddress::Unix(p) => Some(p),
            ListenAddress::Tcp(_) => None,
        }
    }
}

struct Planned {
    spec: ListenerSpec,
    protocol: String,
    handler: ConnHandler,
}

/// Builds a [`Harness`].
#[must_use]
pub struct HarnessBuilder {
    listeners: Vec<Planned>,
    log: Logger,
    metrics: Option<prometheus::Registry>,
    prefix: Option<String>,
    graces: Graces,
    stop_accepting_at: Phase,
}

impl std::fmt::Debug for HarnessBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HarnessBuilder")
            .field("listeners", &self.listeners.len())
            .field("graces", &self.graces)
            .finish()
    }
}

impl HarnessBuilder {
    /// A TCP listener `name` on `127.0.0.1` port 0, serving `protocol`.
    pub fn tcp(
        self,
        name: impl Into<String>,
        protocol: impl Into<String>,
        handler: ConnHandler,
    ) -> Self {
        let spec = ListenerSpec::tcp(name, SocketAddr::from(([127, 0, 0, 1], 0)));
        self.listener(spec, protocol, handler)
    }

    /// A Unix-domain listener `name` at `path` (use a temporary directory),
    /// serving `protocol`.
    pub fn unix(
        self,
        name: impl Into<String>,
        path: impl Into<PathBuf>,
        protocol: impl Into<String>,
        handler: ConnHandler,
    ) -> Self {
        self.listener(ListenerSpec::unix(name, path), protocol, handler)
    }

    /// Any listener spec (its backlog is used when binding).
    pub fn listener(
        mut self,
        spec: ListenerSpec,
        protocol: impl Into<String>,
        handler: ConnHandler,
    ) -> Self {
        self.listeners.push(Planned {
            spec,
            protocol: protocol.into(),
            handler,
        });
        self
    }

    /// Logs go to `log`. Default: discarded.
    pub fn logger(mut self, log: Logger) -> Self {
        self.log = log;
        self
    }

    /// Metrics go to `registry`. Default: a private registry per harness.
    pub fn metrics(mut self, registry: &prometheus::Registry) -> Self {
        self.metrics = Some(registry.clone());
        self
    }

    /// Metric name prefix. Default `lifecycle`.
    pub fn metrics_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    grace_setters!();

    /// When listeners stop accepting (see
    /// [`ListenerBuilder::stop_accepting_at`](crate::ListenerBuilder::stop_accepting_at)).
    /// Default `Aborting`.
    pub fn stop_accepting_at(mut self, phase: Phase) -> Self {
        self.stop_accepting_at = phase;
        self
    }

    /// The harness actor, not started: call `.start()` and send [`Start`].
    pub fn build(self) -> Harness {
        Harness {
            plan: Some(self),
            running: None,
        }
    }
}

struct Running {
    lifecycle: Lifecycle,
}

/// A whole lifecycle for tests, driven by messages. See the module docs.
pub struct Harness {
    plan: Option<HarnessBuilder>,
    running: Option<Running>,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("started", &self.running.is_some())
            .finish()
    }
}

impl Harness {
    /// An empty harness builder; add listeners.
    pub fn builder() -> HarnessBuilder {
        HarnessBuilder {
            listeners: Vec::new(),
            log: Logger::root(slog::Discard, o!()),
            metrics: None,
            prefix: None,
            graces: Graces::default(),
            stop_accepting_at: Phase::Aborting,
        }
    }

    fn log(&self) -> Option<&Logger> {
        self.running.as_ref().map(|r| r.lifecycle.logger())
    }
}

/// Binds `spec` as this process would in immediate mode
/// ([`lifecycle_handoff::bind_listener`]: close-on-exec, non-blocking, with
/// the spec's backlog); a TCP port 0 is replaced by the port bound.
fn bind(spec: &ListenerSpec) -> Result<PassedListener, LifecycleError> {
    let name = spec.name().to_owned();
    let (fd, bound) = lifecycle_handoff::bind_listener(spec).map_err(|e| match e {
        lifecycle_handoff::Error::Bind { source, .. } => LifecycleError::Bind {
            name,
            address: spec.address().to_string(),
            source,
        },
        source => LifecycleError::ListenerStart {
            name: name.clone(),
            source: ListenerError::Invalid {
                name,
                source: Box::new(source),
            },
        },
    })?;
    Ok(PassedListener {
        spec: ListenerSpec::new(spec.name(), bound).with_backlog(spec.backlog()),
        fd,
    })
}

impl Actor for Harness {
    type Context = Context<Self>;
}

impl Handler<Start> for Harness {
    type Result = ResponseActFuture<Self, Result<HarnessInfo, LifecycleError>>;

    fn handle(&mut self, _msg: Start, _ctx: &mut Self::Context) -> Self::Result {
        let Some(plan) = self.plan.take() else {
            return Box::pin(actix::fut::ready(Err(LifecycleError::AlreadyStarted)));
        };
        debug!(plan.log, "harness start"; "listeners" => plan.listeners.len());
        let mut inventory = Inventory::default();
        let mut addresses = Vec::new();
        for p in &plan.listeners {
            match bind(&p.spec) {
                Ok(passed) => {
                    addresses.push((p.spec.name().to_owned(), passed.spec.address().clone()));
                    inventory.listeners.push(passed);
                }
                Err(e) => return Box::pin(actix::fut::ready(Err(e))),
            }
        }
        let mut builder = Lifecycle::builder(inventory)
            .logger(plan.log.clone())
            .graces(plan.graces)
            .handle_signals(false)
            .stop_system(false);
        if let Some(m) = &plan.metrics {
            builder = builder.metrics(m);
        }
        if let Some(p) = &plan.prefix {
            builder = builder.metrics_prefix(p.clone());
        }
        let lifecycle = match builder.start() {
            Ok(l) => l,
            Err(e) => return Box::pin(actix::fut::ready(Err(e))),
        };
        let listeners: Vec<Addr<ListenerActor>> = plan
            .listeners
            .into_iter()
            .map(|p| {
                lifecycle
                    .listener(p.spec.name(), p.protocol, p.handler)
                    .stop_accepting_at(plan.stop_accepting_at)
                    .start()
            })
            .collect();
        self.running = Some(Running {
            lifecycle: lifecycle.clone(),
        });
        let names: Vec<String> = addresses.iter().map(|(n, _)| n.clone()).collect();
        let ready = async move {
            // A listener answers once it took and adopted its socket; one
            // that failed has stopped and does not answer.
            for (l, name) in listeners.iter().zip(names) {
                match l.send(GetListenerInfo).await {
                    Ok(info) if info.accepting => {}
                    _ => return Err(LifecycleError::ListenerFailed { name }),
                }
            }
            Ok(())
        };
        Box::pin(ready.into_actor(self).map(move |res, _act, _ctx| {
            res.map(|()| HarnessInfo {
                addresses,
                lifecycle,
            })
        }))
    }
}

impl Handler<Snapshot> for Harness {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        if let Some(log) = self.log() {
            debug!(log, "harness snapshot");
        }
        MessageResult(
            self.running
                .as_ref()
                .map(|r| r.lifecycle.connections().snapshot())
                .unwrap_or_default(),
        )
    }
}

impl Handler<Done> for Harness {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: Done, _ctx: &mut Self::Context) -> Self::Result {
        match &self.running {
            Some(r) => {
                debug!(r.lifecycle.logger(), "harness done");
                Box::pin(r.lifecycle.connections().done())
            }
            None => Box::pin(async {}),
        }
    }
}

impl Handler<BeginShutdown> for Harness {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: BeginShutdown, _ctx: &mut Self::Context) -> Self::Result {
        match &self.running {
            Some(r) => {
                debug!(r.lifecycle.logger(), "harness begin shutdown");
                let coordinator = r.lifecycle.coordinator().clone();
                Box::pin(async move {
                    let _ = coordinator.send(msg).await;
                })
            }
            None => Box::pin(async {}),
        }
    }
}

impl Handler<WaitStopped> for Harness {
    type Result = ResponseFuture<StopOutcome>;

    fn handle(&mut self, msg: WaitStopped, _ctx: &mut Self::Context) -> Self::Result {
        match &self.running {
            Some(r) => {
                debug!(r.lifecycle.logger(), "harness wait stopped");
                let coordinator = r.lifecycle.coordinator().clone();
                Box::pin(async move {
                    (coordinator.send(msg).await).unwrap_or(StopOutcome::without_stop(1))
                })
            }
            None => Box::pin(async { StopOutcome::without_stop(0) }),
        }
    }
}

impl Handler<GetPhase> for Harness {
    type Result = MessageResult<GetPhase>;

    fn handle(&mut self, _msg: GetPhase, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.running
                .as_ref()
                .map(|r| r.lifecycle.shutdown_handle().phase())
                .unwrap_or(Phase::Running),
        )
    }
}
