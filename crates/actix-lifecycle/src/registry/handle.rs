//! `RegistryHandle`: the direct, thread-safe way to a registry's shards.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use slog::{debug, info, Logger};
use tokio::sync::Notify;

use super::admission::{Limits, RefusedCounts};
use super::messages::{ConnectionInfo, KindCount, RegistrySnapshot};
use super::shard::{RegistryShard, ShardInner, ShardState, SEQ_BITS};
use super::{Common, ConnKind, Shared};

/// A cheap, cloneable, thread-safe handle on a registry: the direct (no
/// message) way to everything the [`ConnectionRegistry`](crate::ConnectionRegistry) actor does.
#[derive(Clone)]
pub struct RegistryHandle {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for RegistryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryHandle")
            .field("shards", &self.shared.shards().len())
            .finish()
    }
}

impl RegistryHandle {
    pub(crate) fn new(log: Logger) -> Self {
        RegistryHandle {
            shared: Arc::new(Shared {
                common: Arc::new(Common {
                    log,
                    epoch: Instant::now(),
                    shut_down: AtomicBool::new(false),
                    done_waiters: AtomicUsize::new(0),
                    done: Notify::new(),
                    kinds: RwLock::new(Vec::new()),
                    default_limits: Mutex::new(Limits::none()),
                    addresses: Default::default(),
                }),
                shards: RwLock::new(Vec::new()),
            }),
        }
    }

    /// The interned (protocol, listener) pair, for registering connections.
    pub fn kind(&self, protocol: &str, listener: &str) -> ConnKind {
        self.shared.common.intern(protocol, listener)
    }

    /// The registry-wide default limits (see
    /// [`RegistryBuilder::limits`](crate::RegistryBuilder::limits)).
    pub fn default_limits(&self) -> Limits {
        self.shared.common.default_limits()
    }

    /// Changes the registry-wide default limits now; every listener
    /// without its own limits follows. Connections already live stay.
    pub fn set_default_limits(&self, limits: Limits) {
        self.shared.common.set_default_limits(limits);
    }

    /// Sets the limits of one (protocol, listener) now; `None` makes it
    /// follow the registry default again. Connections already live stay
    /// (a listener over a lowered limit refuses until it is under it).
    ///
    /// ```
    /// use actix_lifecycle::{ConnectionRegistry, Limits, RefuseReason};
    ///
    /// let handle = ConnectionRegistry::builder().build().unwrap().handle();
    /// let (shard, kind) = (handle.new_shard(), handle.kind("imap", "imap"));
    /// let first = shard.admit(&kind, None).unwrap();
    /// handle.set_limits(&kind, Some(Limits::none().max_connections(1)));
    /// assert_eq!(shard.admit(&kind, None).unwrap_err(), RefuseReason::ListenerFull);
    /// handle.set_limits(&kind, None);
    /// let second = shard.admit(&kind, None).unwrap();
    /// # drop((first, second));
    /// ```
    pub fn set_limits(&self, kind: &ConnKind, limits: Option<Limits>) {
        let kind = self.shared.common.resolve(kind);
        kind.admission
            .set_own(limits, || self.shared.common.default_limits());
    }

    /// The limits in force for `kind`.
    pub fn limits(&self, kind: &ConnKind) -> Limits {
        self.shared.common.resolve(kind).admission.limits()
    }

    /// Creates a new shard and adds it to the registry for good: shards
    /// are never removed (the registry visits each for the counts), so
    /// create one per arbiter that serves connections, once, and use it
    /// only there (see [`RegistryShard`]). Code that registers from
    /// whatever thread it runs on (an actix-web `on_connect`, a worker
    /// pool) wants [`current_thread_shard`](Self::current_thread_shard)
    /// instead, which cannot grow the registry without bound.
    pub fn new_shard(&self) -> RegistryShard {
        let mut shards = self
            .shared
            .shards
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let inner = Arc::new(ShardInner {
            index: shards.len() as u64,
            shared: Arc::clone(&self.shared.common),
            state: Mutex::new(ShardState::default()),
        });
        shards.push(Arc::clone(&inner));
        RegistryShard { inner }
    }

    /// This registry's shard for the calling thread, created on the first
    /// call from each thread and reused after: at most one shard per
    /// (thread, registry), however often it is called.
    ///
    /// ```
    /// use actix_lifecycle::ConnectionRegistry;
    ///
    /// let handle = ConnectionRegistry::builder().build().unwrap().handle();
    /// let kind = handle.kind("http", "web");
    /// let before = handle.shard_count();
    /// let guards: Vec<_> = (0..100).map(|_| handle.register_on_current_thread(&kind)).collect();
    /// assert_eq!((handle.live(), handle.shard_count()), (100, before + 1));
    /// # drop(guards);
    /// ```
    pub fn current_thread_shard(&self) -> RegistryShard {
        thread_local! {
            static SHARDS: std::cell::RefCell<Vec<(std::sync::Weak<super::Shared>, RegistryShard)>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        SHARDS.with(|shards| {
            let mut shards = shards.borrow_mut();
            let me = Arc::downgrade(&self.shared);
            if let Some((_, shard)) = shards.iter().find(|(r, _)| r.ptr_eq(&me)) {
                return shard.clone();
            }
            // Registries gone since: their shards go with them.
            shards.retain(|(r, _)| r.strong_count() > 0);
            let shard = self.new_shard();
            shards.push((me, shard.clone()));
            shard
        })
    }

    /// Registers a connection of `kind` on
    /// [`current_thread_shard`](Self::current_thread_shard) (see
    /// [`RegistryShard::register`]: no limit is checked).
    pub fn register_on_current_thread(&self, kind: &ConnKind) -> super::ConnectionGuard {
        self.current_thread_shard().register(kind)
    }

    /// How many shards the registry has.
    pub fn shard_count(&self) -> usize {
        (self.shared.shards.read())
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Live connections in all shards.
    pub fn live(&self) -> u64 {
        let mut n = 0;
        self.shared.each_shard(|st| n += st.live.len() as u64);
        n
    }

    /// True once [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.shared.common.shut_down.load(Ordering::Acquire)
    }

    /// Aborts every live connection now and every connection registered
    /// from now on. Returns how many live connections this call aborted.
    pub fn shutdown(&self) -> usize {
        self.shared.common.shut_down.store(true, Ordering::SeqCst);
        let mut to_wake = Vec::new();
        self.shared.each_shard(|st| to_wake.extend(st.abort_all()));
        // Wake outside the shard locks.
        for entry in &to_wake {
            entry.wake();
        }
        let aborted = to_wake.len();
        info!(self.shared.common.log, "registry shut down: live connections aborted";
            "aborted" => aborted);
        aborted
    }

    fn shard_of(&self, id: u64) -> Option<Arc<ShardInner>> {
        let index = usize::try_from(id >> SEQ_BITS).ok()?;
        self.shared
            .shards
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(index)
            .cloned()
    }

    /// Aborts one live connection. Returns false (and logs at debug level)
    /// when the id is not live.
    pub fn abort(&self, id: u64) -> bool {
        let entry = self.shard_of(id).and_then(|shard| shard.lock().abort(id));
        let hit = entry.is_some();
        if let Some(entry) = entry {
            // Outside the shard lock.
            entry.wake();
        }
        if !hit {
            debug!(self.shared.common.log, "abort of an unknown connection ignored"; "conn" => id);
        }
        hit
    }

    /// Unregisters a connection by id; harmless when it is not live.
    pub fn unregister(&self, id: u64) -> bool {
        match self.shard_of(id) {
            Some(shard) => shard.unregister(id),
            None => {
                debug!(self.shared.common.log, "unregister of an unknown connection ignored";
                    "conn" => id);
                false
            }
        }
    }

    /// Resolves when no connection is live (at once if none is).
    pub fn done(&self) -> impl Future<Output = ()> + Send + 'static {
        let handle = self.clone();
        async move {
            let common = Arc::clone(&handle.shared.common);
            common.done_waiters.fetch_add(1, Ordering::SeqCst);
            loop {
                let notified = common.done.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if handle.live() == 0 {
                    break;
                }
                notified.await;
            }
            common.done_waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Counts per kind and every live entry with its age.
    pub fn snapshot(&self) -> RegistrySnapshot {
        let common = &self.shared.common;
        let now = common.now_nanos();
        let names = common.kind_names();
        let mut entries = Vec::new();
        self.shared.each_shard(|st| {
            for e in st.live.iter() {
                let (protocol, listener) = names
                    .get(e.kind as usize)
                    .cloned()
                    .unwrap_or_else(|| (Arc::from("?"), Arc::from("?")));
                entries.push((
                    e.started,
                    ConnectionInfo {
                        id: e.id,
                        protocol,
                        listener,
                        age: Duration::from_nanos(now.saturating_sub(e.started)),
                        aborted: e.is_aborted(),
                    },
                ));
            }
        });
        entries.sort_by_key(|(started, info)| (*started, info.id));
        let limits = common.kind_limits();
        let kinds: Vec<KindCount> = self
            .shared
            .stats_by_kind()
            .into_iter()
            .enumerate()
            .map(|(i, (k, s))| KindCount {
                protocol: k.protocol,
                listener: k.listener,
                live: s.live,
                accepted: s.accepted,
                aborted: s.aborted,
                refused: RefusedCounts::from_array(s.refused),
                limits: limits.get(i).copied().unwrap_or_default(),
            })
            .collect();
        RegistrySnapshot {
            live: entries.len() as u64,
            shut_down: self.is_shut_down(),
            kinds,
            entries: entries.into_iter().map(|(_, i)| i).collect(),
            default_limits: common.default_limits(),
            tracked_networks: common.addresses.len(),
        }
    }
}
