//! The `ConnectionRegistry`: every live connection by (protocol, listener),
//! kept in per-arbiter shards, with persistent abort and prometheus metrics.

mod abort;
mod admission;
mod entry;
mod handle;
mod messages;
mod metrics;
mod shard;
mod stats;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Instant;

use actix::{Actor, Context, Handler, MessageResult, ResponseFuture};
use slog::{debug, info, o, Logger};
use tokio::sync::Notify;

pub use abort::Tracked;
pub use admission::{
    Limits, Rate, RefuseReason, RefusedCounts, MAX_PREFIX_V4, MAX_PREFIX_V6, MAX_TRACKED_NETWORKS,
    STRIPES,
};
pub use handle::RegistryHandle;
pub use messages::{
    Abort, ConnectionInfo, Done, KindCount, Register, RegistrySnapshot, SetLimits, Shutdown,
    Snapshot, Unregister,
};
pub use shard::{Admission, ConnectionGuard, RegistryShard};

pub use stats::DURATION_BUCKETS;

use crate::error::LifecycleError;
use crate::metrics::DEFAULT_PREFIX;
use admission::{AddressTable, KindAdmission};
use metrics::RegistryCollector;
use shard::{ShardInner, ShardState};
use stats::KindStats;

/// A (protocol, listener) pair, interned by a registry so registering with
/// it costs no string work. Get one from [`RegistryHandle::kind`].
///
/// A kind belongs to the registry that made it: it holds a weak reference
/// to it, so while the kind lives no other registry can take that
/// registry's place in memory and mistake the kind for one of its own. A
/// registry given a kind of another (or of one dropped since) interns it
/// again by its labels.
#[derive(Debug, Clone)]
pub struct ConnKind {
    index: u32,
    registry: Weak<Common>,
    /// The protocol label (`smtp`, `imap`, ...).
    pub protocol: Arc<str>,
    /// The listener label (the listener's name).
    pub listener: Arc<str>,
    /// Its admission state, shared by every shard.
    pub(crate) admission: Arc<KindAdmission>,
}

/// One interned kind.
pub(crate) struct KindSlot {
    protocol: Arc<str>,
    listener: Arc<str>,
    admission: Arc<KindAdmission>,
}

/// What every shard of a registry shares. Read-mostly on the accept path.
pub(crate) struct Common {
    pub(crate) log: Logger,
    epoch: Instant,
    pub(crate) shut_down: AtomicBool,
    pub(crate) done_waiters: AtomicUsize,
    pub(crate) done: Notify,
    kinds: RwLock<Vec<KindSlot>>,
    /// The limits of every kind without its own.
    default_limits: Mutex<Limits>,
    /// Live connections and buckets per client network.
    pub(crate) addresses: AddressTable,
}

impl Common {
    pub(crate) fn now_nanos(&self) -> u64 {
        // Seconds and nanoseconds apart: no 128-bit multiply (`as_nanos`)
        // on the accept path; saturates after 584 years.
        let d = self.epoch.elapsed();
        d.as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()))
    }

    fn intern(self: &Arc<Self>, protocol: &str, listener: &str) -> ConnKind {
        let mut kinds = self.kinds.write().unwrap_or_else(PoisonError::into_inner);
        let found = kinds
            .iter()
            .position(|k| &*k.protocol == protocol && &*k.listener == listener);
        let index = match found {
            Some(i) => i,
            None => {
                // Lock order: kinds, a kind's own limits, then the
                // default (never the reverse).
                let default = *self
                    .default_limits
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                kinds.push(KindSlot {
                    protocol: Arc::from(protocol),
                    listener: Arc::from(listener),
                    admission: Arc::new(KindAdmission::new(default)),
                });
                kinds.len() - 1
            }
        };
        let k = &kinds[index];
        ConnKind {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            registry: Arc::downgrade(self),
            protocol: Arc::clone(&k.protocol),
            listener: Arc::clone(&k.listener),
            admission: Arc::clone(&k.admission),
        }
    }

    /// `kind` as this registry knows it (re-interned when the kind was
    /// made by another registry).
    pub(crate) fn resolve<'a>(self: &Arc<Self>, kind: &'a ConnKind) -> Cow<'a, ConnKind> {
        if std::ptr::eq(kind.registry.as_ptr(), Arc::as_ptr(self)) {
            Cow::Borrowed(kind)
        } else {
            Cow::Owned(self.intern(&kind.protocol, &kind.listener))
        }
    }

    fn kind_names(&self) -> Vec<(Arc<str>, Arc<str>)> {
        self.kinds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|k| (Arc::clone(&k.protocol), Arc::clone(&k.listener)))
            .collect()
    }

    /// Every kind's limits in force, in kind order.
    fn kind_limits(&self) -> Vec<Limits> {
        self.kinds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|k| k.admission.limits())
            .collect()
    }

    pub(crate) fn default_limits(&self) -> Limits {
        *self
            .default_limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A new registry-wide default, applied to every kind without its own.
    pub(crate) fn set_default_limits(&self, limits: Limits) {
        *self
            .default_limits
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = limits;
        // A kind interned meanwhile read the new default or is visited here.
        for k in self
            .kinds
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            k.admission.default_changed(|| self.default_limits());
        }
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
            for (total, s) in totals.iter_mut().zip(st.kinds.as_slice()) {
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
/// let shard = handle.new_shard();
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
    limits: Limits,
}

impl std::fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryBuilder")
            .field("prefix", &self.prefix)
            .field("limits", &self.limits)
            .finish()
    }
}

impl RegistryBuilder {
    /// Admission limits of every listener that sets none of its own
    /// ([`ListenerBuilder::limits`](crate::ListenerBuilder::limits)).
    /// Default: [`Limits::none`]. Change them at run time with
    /// [`SetLimits`].
    ///
    /// ```
    /// use std::net::{IpAddr, Ipv4Addr};
    /// use actix_lifecycle::{ConnectionRegistry, Limits, RefuseReason};
    ///
    /// let registry = ConnectionRegistry::builder()
    ///     .limits(Limits::none().max_per_address(2))
    ///     .build()
    ///     .unwrap();
    /// let handle = registry.handle();
    /// let (shard, kind) = (handle.new_shard(), handle.kind("smtp", "mx"));
    /// let client = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    /// let a = shard.admit(&kind, client).unwrap();
    /// let b = shard.admit(&kind, client).unwrap();
    /// assert_eq!(shard.admit(&kind, client).unwrap_err(), RefuseReason::AddressFull);
    /// drop(a);
    /// let c = shard.admit(&kind, client).unwrap();
    /// assert_eq!(handle.snapshot().kind("smtp", "mx").unwrap().refused.address_full, 1);
    /// # drop((b, c));
    /// ```
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

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
        handle.shared.common.set_default_limits(self.limits);
        if let Some(metrics) = &self.metrics {
            let metrics_err = |source| LifecycleError::Metrics {
                prefix: self.prefix.clone(),
                source,
            };
            let collector = RegistryCollector::new(Arc::clone(&handle.shared), &self.prefix)
                .map_err(metrics_err)?;
            metrics.register(Box::new(collector)).map_err(metrics_err)?;
        }
        let shard = handle.new_shard();
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
            limits: Limits::none(),
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

impl Handler<SetLimits> for ConnectionRegistry {
    type Result = ();

    fn handle(&mut self, msg: SetLimits, _ctx: &mut Self::Context) {
        match &msg.listener {
            None => {
                info!(self.log, "default admission limits changed"; "limits" => ?msg.limits);
                if let Some(limits) = msg.limits {
                    self.handle.set_default_limits(limits);
                }
            }
            Some((protocol, listener)) => {
                info!(self.log, "admission limits changed";
                    "protocol" => protocol, "listener" => listener, "limits" => ?msg.limits);
                let kind = self.handle.kind(protocol, listener);
                self.handle.set_limits(&kind, msg.limits);
            }
        }
    }
}

impl Handler<Snapshot> for ConnectionRegistry {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _msg: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        debug!(self.log, "snapshot");
        MessageResult(self.handle.snapshot())
    }
}
