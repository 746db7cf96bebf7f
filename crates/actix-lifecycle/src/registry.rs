//! The `ConnectionRegistry`: every live connection by (protocol, listener),
//! kept in per-arbiter shards, with persistent abort and prometheus metrics.

mod abort;
mod handle;
mod messages;
mod shard;

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use actix::{Actor, Context, Handler, MessageResult, ResponseFuture};
use slog::{debug, o, Logger};
use tokio::sync::Notify;

pub use abort::Tracked;
pub use handle::RegistryHandle;
pub use messages::{
    Abort, ConnectionInfo, Done, KindCount, Register, RegistrySnapshot, Shutdown, Snapshot,
    Unregister,
};
pub use shard::{ConnectionGuard, RegistryShard};

use crate::error::LifecycleError;
use crate::metrics::{KindStats, RegistryCollector, DEFAULT_PREFIX};
use shard::{ShardInner, ShardState};

/// A (protocol, listener) pair, interned by a registry so registering with
/// it costs no string work. Get one from [`RegistryHandle::kind`].
#[derive(Debug, Clone)]
pub struct ConnKind {
    index: u32,
    registry: usize,
    /// The protocol label (`smtp`, `imap`, ...).
    pub protocol: Arc<str>,
    /// The listener label (the listener's name).
    pub listener: Arc<str>,
}

/// What every shard of a registry shares. Read-mostly on the accept path.
pub(crate) struct Common {
    pub(crate) log: Logger,
    epoch: Instant,
    pub(crate) shut_down: AtomicBool,
    pub(crate) done_waiters: AtomicUsize,
    pub(crate) done: Notify,
    kinds: RwLock<Vec<(Arc<str>, Arc<str>)>>,
}

impl Common {
    pub(crate) fn now_nanos(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn id(&self) -> usize {
        self as *const Common as usize
    }

    fn intern(self: &Arc<Self>, protocol: &str, listener: &str) -> ConnKind {
        let mut kinds = self.kinds.write().unwrap_or_else(PoisonError::into_inner);
        let found = kinds
            .iter()
            .position(|(p, l)| &**p == protocol && &**l == listener);
        let index = match found {
            Some(i) => i,
            None => {
                kinds.push((Arc::from(protocol), Arc::from(listener)));
                kinds.len() - 1
            }
        };
        let (p, l) = &kinds[index];
        ConnKind {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            registry: self.id(),
            protocol: Arc::clone(p),
            listener: Arc::clone(l),
        }
    }

    /// The index of `kind` in this registry (re-interned when the kind was
    /// made by another registry).
    pub(crate) fn kind_index(self: &Arc<Self>, kind: &ConnKind) -> u32 {
        if kind.registry == self.id() {
            kind.index
        } else {
            self.intern(&kind.protocol, &kind.listener).index
        }
    }

    fn kind_names(&self) -> Vec<(Arc<str>, Arc<str>)> {
        self.kinds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The registry: its common part and every shard.
pub(crate) struct Shared {
    common: Arc<Common>,
    shards: RwLock<Vec<Arc<ShardInner>>>,
}

/// Labels of a kind, for metrics.
pub(crate) struct KindLabels {
    pub(crate) protocol: Arc<str>,
    pub(crate) listener: Arc<str>,
}

impl Shared {
    fn shards(&self) -> Vec<Arc<ShardInner>> {
        self.shards
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn each_shard(&self, mut f: impl FnMut(&mut ShardState)) {
        for shard in self.shards() {
            f(&mut shard.lock());
        }
    }

    pub(crate) fn stats_by_kind(&self) -> Vec<(KindLabels, KindStats)> {
        let names = self.common.kind_names();
        let mut totals = vec![KindStats::default(); names.len()];
        self.each_shard(|st| {
            for (total, s) in totals.iter_mut().zip(st.kinds.iter()) {
                total.add(s);
            }
        });
        names
            .into_iter()
            .zip(totals)
            .map(|((protocol, listener), s)| (KindLabels { protocol, listener }, s))
            .collect()
    }
}

/// Builds a [`ConnectionRegistry`].
///
/// ```
/// use actix_lifecycle::ConnectionRegistry;
///
/// let metrics = prometheus::Registry::new();
/// let registry = ConnectionRegistry::builder()
///     .metrics(&metrics)
///     .prefix("mail")
///     .build()
///     .unwrap();
/// let handle = registry.handle();
/// let shard = handle.shard();
/// let guard = shard.register(&handle.kind("smtp", "submission"));
/// assert_eq!(handle.live(), 1);
/// let text = format!("{:?}", metrics.gather());
/// assert!(text.contains("mail_connections"));
/// drop(guard);
/// assert_eq!(handle.live(), 0);
/// ```
#[must_use]
pub struct RegistryBuilder {
    log: Logger,
    metrics: Option<prometheus::Registry>,
    prefix: String,
}

impl std::fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryBuilder")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RegistryBuilder {
    /// Logs go to `log` (key `actor=registry`). Default: discarded.
    pub fn logger(mut self, log: Logger) -> Self {
        self.log = log;
        self
    }

    /// Publishes metrics on `registry`. Default: no metrics.
    pub fn metrics(mut self, registry: &prometheus::Registry) -> Self {
        self.metrics = Some(registry.clone());
        self
    }

    /// Metric name prefix. Default [`DEFAULT_PREFIX`] (`lifecycle`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The registry, its metrics registered.
    pub fn build(self) -> Result<ConnectionRegistry, LifecycleError> {
        let log = self.log.new(o!("actor" => "registry"));
        let handle = RegistryHandle::new(log.clone());
        if let Some(metrics) = &self.metrics {
            let metrics_err = |source| LifecycleError::Metrics {
                prefix: self.prefix.clone(),
                source,
            };
            let collector = RegistryCollector::new(Arc::clone(&handle.shared), &self.prefix)
                .map_err(metrics_err)?;
            metrics.register(Box::new(collector)).map_err(metrics_err)?;
        }
        let shard = handle.shard();
        Ok(ConnectionRegistry { handle, shard, log })
    }
}

/// Tracks every live connection by (protocol, listener).
///
/// Connections register through a [`RegistryShard`] (one per arbiter, no
/// message); the actor answers [`Register`], [`Unregister`], [`Shutdown`],
/// [`Abort`], [`Done`] and [`Snapshot`] by visiting every shard. The same
/// operations are available without messages on its [`RegistryHandle`].
pub struct ConnectionRegistry {
    handle: RegistryHandle,
    shard: RegistryShard,
    log: Logger,
}

impl std::fmt::Debug for ConnectionRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionRegistry")
            .field("handle", &self.handle)
            .finish()
    }
}

impl ConnectionRegistry {
    /// A builder: logger, metrics registry and prefix.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder {
            log: Logger::root(slog::Discard, o!()),
            metrics: None,
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }

    /// The direct handle (keep one before starting the actor).
    pub fn handle(&self) -> RegistryHandle {
        self.handle.clone()
    }
}

impl Actor for ConnectionRegistry {
    type Context = Context<Self>;
}

impl Handler<Register> for ConnectionRegistry {
    type Result = MessageResult<Register>;

    fn handle(&mut self, msg: Register, _ctx: &mut Self::Context) -> Self::Result {
        debug!(self.log, "register"; "protocol" => &*msg.kind.protocol, "listener" => &*msg.kind.listener);
        MessageResult(self.shard.register(&msg.kind))
    }
}

impl Handler<Unregister> for ConnectionRegistry {
    type Result = bool;

    fn handle(&mut self, msg: Unregister, _ctx: &mut Self::Context) -> bool {
        debug!(self.log, "unregister"; "conn" => msg.id);
        self.handle.unregister(msg.id)
    }
}

impl Handler<Shutdown> for ConnectionRegistry {
    type Result = usize;

    fn handle(&mut self, _msg: Shutdown, _ctx: &mut Self::Context) -> usize {
        debug!(self.log, "shutdown");
        self.handle.shutdown()
    }
}

impl Handler<Abort> for ConnectionRegistry {
    type Result = bool;

    fn handle(&mut self, msg: Abort, _ctx: &mut Self::Context) -> bool {
        debug!(self.log, "abort"; "conn" => msg.id);
        self.handle.abort(msg.id)
    }
}

impl Handler<Done> for ConnectionRegistry {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: Done, _ctx: &mut Self::Context) -> Self::Result {
        debug!(self.log, "done requested"; "live" => self.handle.live());
        Box::pin(self.handle.done())
    }
}

impl Handler<Snapshot> for ConnectionRegistry {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        debug!(self.log, "snapshot");
        MessageResult(self.handle.snapshot())
    }
}
