//! `Lifecycle`: the broker, the registry and the shutdown coordinator
//! started together, and the place listeners are made from.

use std::time::Duration;

use actix::{Actor, Addr};
use lifecycle_handoff::{Handoff, Inventory, Mode};
use slog::Logger;

use crate::broker::{CloseUnclaimed, FdBroker, GetInventory, TakeListener};
use crate::error::LifecycleError;
use crate::listener::{check_listener, ConnHandler, ListenerActor, ListenerBuilder};
use crate::metrics::{PhaseCollector, DEFAULT_PREFIX};
use crate::phase::ShutdownHandle;
use crate::ready::{Ready, Served, ServedListener};
use crate::registry::{ConnectionRegistry, RegistryHandle};
use crate::shutdown::{grace_setters, Graces, ShutdownCoordinator};

/// Builds and starts a [`Lifecycle`].
#[must_use]
pub struct LifecycleBuilder {
    inventory: Inventory,
    log: Logger,
    metrics: prometheus::Registry,
    prefix: String,
    graces: Graces,
    signals: bool,
    stop_system: bool,
    force_exit: Option<Box<dyn Fn(i32) + Send + Sync>>,
    mode: Option<Mode>,
    allow_root: bool,
}

impl std::fmt::Debug for LifecycleBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LifecycleBuilder")
            .field("inventory", &self.inventory.len())
            .field("prefix", &self.prefix)
            .field("signals", &self.signals)
            .field("stop_system", &self.stop_system)
            .finish()
    }
}

impl LifecycleBuilder {
    /// Logs of every actor go to `log`. Default: errors (a listener that
    /// cannot start, a fatal failure, a forced exit) are written to
    /// standard error, one line each; everything else is discarded.
    pub fn logger(mut self, log: Logger) -> Self {
        self.log = log;
        self
    }

    /// Metrics go to `registry`. Default: a private registry of this
    /// lifecycle (see [`Lifecycle::metrics`]).
    pub fn metrics(mut self, registry: &prometheus::Registry) -> Self {
        self.metrics = registry.clone();
        self
    }

    /// Metric name prefix. Default `lifecycle`.
    pub fn metrics_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    grace_setters!(and graces);

    /// Listen for SIGTERM/SIGINT; default true. Their handlers exist once
    /// [`start`](Self::start) returns. Upgrade signals (SIGHUP, SIGUSR2) are
    /// the program's own: to keep an early one from terminating it, hold
    /// them from the start of `main` with
    /// [`lifecycle_handoff::HeldSignals`] and release them once its handlers
    /// are installed.
    pub fn handle_signals(mut self, on: bool) -> Self {
        self.signals = on;
        self
    }

    /// Stop the actix `System` with exit code 0 at `Stopped` (1 after a [`Fatal`](crate::Fatal), such as a listener that failed); default true.
    pub fn stop_system(mut self, on: bool) -> Self {
        self.stop_system = on;
        self
    }

    /// What a second signal does (see [`crate::ShutdownBuilder::on_force_exit`]).
    pub fn on_force_exit(mut self, f: impl Fn(i32) + Send + Sync + 'static) -> Self {
        self.force_exit = Some(Box::new(f));
        self
    }

    /// Serve a [`Mode::Privileged`] inventory while running as root; default
    /// false (see [`Lifecycle::from_handoff`]).
    pub fn allow_root(mut self, allow: bool) -> Self {
        self.allow_root = allow;
        self
    }

    /// Starts the broker, the registry and the coordinator on the current
    /// arbiter, with the SIGTERM/SIGINT handlers installed (unless turned
    /// off) before it returns. Must be called inside a running actix
    /// `System`; refuses an inventory with two listeners of one name.
    pub fn start(self) -> Result<Lifecycle, LifecycleError> {
        if actix_rt::System::try_current().is_none() || actix_rt::Arbiter::try_current().is_none() {
            return Err(LifecycleError::NoSystem);
        }
        if self.mode == Some(Mode::Privileged) && !self.allow_root && running_as_root() {
            return Err(LifecycleError::ServingAsRoot);
        }
        let mut names = std::collections::HashSet::new();
        if let Some(l) = (self.inventory.listeners.iter()).find(|l| !names.insert(l.spec.name())) {
            return Err(LifecycleError::DuplicateListener {
                name: l.spec.name().to_owned(),
            });
        }
        let registry = ConnectionRegistry::builder()
            .logger(self.log.clone())
            .metrics(&self.metrics)
            .prefix(self.prefix.clone())
            .build()?;
        let connections = registry.handle();
        let mut shutdown = ShutdownCoordinator::builder(connections.clone())
            .logger(self.log.clone())
            .graces(self.graces)
            .handle_signals(self.signals)
            .stop_system(self.stop_system);
        if let Some(f) = self.force_exit {
            shutdown = shutdown.on_force_exit(f);
        }
        let coordinator = shutdown.build();
        let shutdown_handle = coordinator.handle();
        PhaseCollector::register(&self.metrics, &self.prefix, shutdown_handle.clone())?;
        Ok(Lifecycle {
            broker: FdBroker::new(self.inventory, self.log.clone()).start(),
            registry: registry.start(),
            connections,
            coordinator: coordinator.start(),
            shutdown_handle,
            log: self.log,
            metrics: self.metrics,
            served: Served::default(),
            drain_grace: self.graces.drain,
        })
    }
}

/// A running lifecycle: [`FdBroker`], [`ConnectionRegistry`] and
/// [`ShutdownCoordinator`], plus what listeners need. Cheap to clone.
///
/// Start one listener per inventory listener with [`serve`](Self::serve) or
/// [`listener`](Self::listener) (or take one for another server with
/// [`take_listener`](Self::take_listener)), then await
/// [`ready`](Self::ready): it resolves once every one of them holds its
/// socket, closes (and logs) every descriptor nobody claimed, and fails
/// with the listener's name and the cause when one could not start. See
/// the crate documentation for a complete server.
#[derive(Clone)]
pub struct Lifecycle {
    broker: Addr<FdBroker>,
    registry: Addr<ConnectionRegistry>,
    connections: RegistryHandle,
    coordinator: Addr<ShutdownCoordinator>,
    shutdown_handle: ShutdownHandle,
    log: Logger,
    metrics: prometheus::Registry,
    served: Served,
    drain_grace: Duration,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("phase", &self.shutdown_handle.phase())
            .finish()
    }
}

impl Lifecycle {
    /// A builder for a lifecycle owning `inventory`. A hand-built inventory
    /// must hold listening stream sockets bound where their specs say (a
    /// declared port 0 accepts any port; Unix sockets need a path): each
    /// `ListenerActor` checks its socket with
    /// [`lifecycle_handoff::validate_listener`] and stops with that error
    /// otherwise. Inventories from `Handoff` always pass.
    pub fn builder(inventory: Inventory) -> LifecycleBuilder {
        LifecycleBuilder {
            inventory,
            log: crate::stderr_log::StderrErrors::logger(),
            metrics: prometheus::Registry::new(),
            prefix: DEFAULT_PREFIX.to_owned(),
            graces: Graces::default(),
            signals: true,
            stop_system: true,
            force_exit: None,
            mode: None,
            allow_root: false,
        }
    }

    /// A builder for a lifecycle owning what `handoff` bound or was passed
    /// (see [`Handoff::into_inventory`]). In [`Mode::Privileged`] the
    /// process started as root to bind privileged ports for a service that
    /// must not keep root: [`start`](LifecycleBuilder::start) then refuses
    /// to serve while the process is still root
    /// ([`LifecycleError::ServingAsRoot`], which says how to drop), unless
    /// [`allow_root`](LifecycleBuilder::allow_root) says otherwise.
    pub fn from_handoff(handoff: Handoff) -> LifecycleBuilder {
        let mode = handoff.mode();
        let mut builder = Lifecycle::builder(handoff.into_inventory());
        builder.mode = Some(mode);
        builder
    }

    /// A listener builder for `name` (as in the inventory) serving
    /// `protocol` with `handler`, with this lifecycle's broker, registry,
    /// shutdown handle and logger filled in. [`ready`](Self::ready) waits
    /// for it: start it (or drop the builder, which `ready` reports as a
    /// listener that stopped).
    pub fn listener(
        &self,
        name: impl Into<String>,
        protocol: impl Into<String>,
        handler: ConnHandler,
    ) -> ListenerBuilder {
        let (name, protocol) = (name.into(), protocol.into());
        let report = self.served.expect(&name, &protocol);
        ListenerActor::builder(name, self.broker.clone())
            .protocol(protocol)
            .registry(self.connections.clone())
            .shutdown(self.shutdown_handle.clone())
            .handler(handler)
            .logger(self.log.clone())
            .coordinator(self.coordinator.clone())
            .report(report)
    }

    /// Takes the listener `name` from the broker for a server of the
    /// application's own (actix-web, hyper, ...), counted by
    /// [`ready`](Self::ready) as served under `protocol`. Fails with
    /// [`LifecycleError::ListenerStart`] naming the listener and the cause
    /// (unknown name, already taken, closed as unclaimed, not a listening
    /// socket of the declared network).
    pub async fn take_listener(
        &self,
        name: impl Into<String>,
        protocol: impl Into<String>,
    ) -> Result<lifecycle_handoff::PassedListener, LifecycleError> {
        let (name, protocol) = (name.into(), protocol.into());
        let failed = |source| LifecycleError::ListenerStart {
            name: name.clone(),
            source: crate::ListenerError::Broker {
                name: name.clone(),
                source,
            },
        };
        let passed = (self.broker.send(TakeListener::new(name.clone())).await)
            .map_err(|_| failed(crate::BrokerError::Gone))?
            .map_err(failed)?;
        // The socket must be what the spec says; its address is the real one
        // (a declared port 0 is the bound port).
        let address = check_listener(&passed.fd, &passed.spec).map_err(|source| {
            LifecycleError::ListenerStart {
                name: name.clone(),
                source,
            }
        })?;
        self.served.taken(ServedListener {
            name,
            protocol,
            address,
        });
        Ok(passed)
    }

    /// Resolves once every listener started with [`serve`](Self::serve) or
    /// [`listener`](Self::listener)`(..).start()` holds and serves its
    /// socket; then closes every descriptor of the inventory nobody took or
    /// claimed (logged; see [`CloseUnclaimed`](crate::CloseUnclaimed)) and
    /// reports what serves. Call it after starting every listener, before
    /// telling anyone the service is up.
    ///
    /// Fails with [`LifecycleError::ListenerStart`] naming the first
    /// listener that could not start and why (a name missing from the
    /// inventory, a socket that is not a listening socket, ...); that
    /// listener has also stopped the lifecycle (exit status 1) unless it
    /// was built with [`OnFailure::LogOnly`](crate::OnFailure::LogOnly).
    pub async fn ready(&self) -> Result<Ready, LifecycleError> {
        let listeners = self
            .served
            .wait()
            .await
            .map_err(|(name, source)| LifecycleError::ListenerStart { name, source })?;
        let closed_unclaimed =
            (self.broker.send(CloseUnclaimed).await).map_err(|_| LifecycleError::BrokerGone)?;
        let inventory =
            (self.broker.send(GetInventory).await).map_err(|_| LifecycleError::BrokerGone)?;
        slog::info!(self.log, "ready"; "listeners" => listeners.len(), "closed_unclaimed" => closed_unclaimed);
        Ok(Ready {
            listeners,
            closed_unclaimed,
            inventory,
        })
    }

    /// Starts a listener with default settings on the current arbiter.
    pub fn serve(
        &self,
        name: impl Into<String>,
        protocol: impl Into<String>,
        handler: ConnHandler,
    ) -> Addr<ListenerActor> {
        self.listener(name, protocol, handler).start()
    }

    /// The fd broker.
    pub fn broker(&self) -> &Addr<FdBroker> {
        &self.broker
    }

    /// The connection registry actor.
    pub fn registry(&self) -> &Addr<ConnectionRegistry> {
        &self.registry
    }

    /// The registry's direct handle (shards, snapshot, done without messages).
    pub fn connections(&self) -> &RegistryHandle {
        &self.connections
    }

    /// The shutdown coordinator (send it [`BeginShutdown`](crate::BeginShutdown),
    /// [`WaitStopped`](crate::WaitStopped)).
    pub fn coordinator(&self) -> &Addr<ShutdownCoordinator> {
        &self.coordinator
    }

    /// The handle protocol handlers watch.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown_handle.clone()
    }

    /// The logger every actor was given.
    pub fn logger(&self) -> &Logger {
        &self.log
    }

    /// Every metric of the [`metrics`](Self::metrics) registry (those of
    /// the application registered there too) in the prometheus text
    /// exposition format, for a `/metrics` endpoint: adopters need not
    /// depend on our `prometheus` version.
    pub fn metrics_text(&self) -> String {
        use prometheus::Encoder as _;
        let mut buf = Vec::new();
        // The text encoder only fails on a write error, and a Vec never does.
        let _ = prometheus::TextEncoder::new().encode(&self.metrics.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The drain grace in force (see [`LifecycleBuilder::drain_grace`]).
    pub fn drain_grace(&self) -> Duration {
        self.drain_grace
    }

    /// The prometheus registry the metrics are on.
    pub fn metrics(&self) -> &prometheus::Registry {
        &self.metrics
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions, touches no memory and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
