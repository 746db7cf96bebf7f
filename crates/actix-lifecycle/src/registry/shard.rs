//! Per-arbiter shards of the registry and the guards they hand out.
//!
//! A shard is used by the arbiter it was made for, so its lock is never
//! contended on the accept path: registering costs one allocation, one
//! uncontended lock and a hash insert, with no message and no shared atomic.
//! The [`ConnectionRegistry`](crate::ConnectionRegistry) visits every shard
//! for `Shutdown`, `Done`, `Snapshot` and the gauges.

use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use slog::{debug, info};

use super::admission::{KindAdmission, NetKey, RefuseReason};
use super::entry::{Entry, IdHasher, Live};
use super::stats::{KindStats, KindTable};
use super::{Common, ConnKind};

/// Bits of a connection id that hold the per-shard sequence number; the
/// bits above hold the shard index.
pub(crate) const SEQ_BITS: u32 = 40;

pub(crate) struct ShardState {
    next_seq: u64,
    /// Every live entry of this shard, found by id.
    pub(crate) live: HashSet<Live, BuildHasherDefault<IdHasher>>,
    /// This shard's counts, by [`ConnKind`] index.
    pub(crate) kinds: KindTable,
    /// The admission state of each kind registered here, by kind index
    /// (so that unregistering needs no lookup elsewhere).
    admissions: Vec<Option<Arc<KindAdmission>>>,
}

/// Initial room in a shard's map: its table is allocated once at this size
/// (not grown from tiny), which also keeps it off cache lines that another
/// shard's small allocations could share.
const INITIAL_CAPACITY: usize = 256;

impl Default for ShardState {
    fn default() -> Self {
        ShardState {
            next_seq: 0,
            live: HashSet::with_capacity_and_hasher(INITIAL_CAPACITY, Default::default()),
            kinds: KindTable::default(),
            admissions: Vec::new(),
        }
    }
}

impl ShardState {
    pub(crate) fn kind_mut(&mut self, kind: u32) -> &mut KindStats {
        self.kinds.get_mut(kind)
    }

    /// Aborts every live connection of this shard; returns the ones this
    /// call aborted, to wake outside the lock.
    pub(crate) fn abort_all(&mut self) -> Vec<Arc<Entry>> {
        let ShardState { live, kinds, .. } = self;
        live.iter()
            .filter(|entry| mark_aborted(kinds, entry))
            .map(|entry| Arc::clone(&entry.0))
            .collect()
    }

    /// Aborts the live connection `id` (a no-op when it already was);
    /// returns it, to wake outside the lock, or `None` when not live.
    pub(crate) fn abort(&mut self, id: u64) -> Option<Arc<Entry>> {
        let entry = Arc::clone(&self.live.get(&id)?.0);
        mark_aborted(&mut self.kinds, &entry);
        Some(entry)
    }
}

/// Sets the abort flag of `entry` and counts it in its kind's `aborted`,
/// the first time only: the one place a connection becomes aborted.
/// Returns true the first time. Called under the shard lock.
fn mark_aborted(kinds: &mut KindTable, entry: &Entry) -> bool {
    let first = entry.set_aborted();
    if first {
        kinds.get_mut(entry.kind).aborted += 1;
    }
    first
}

/// Aligned to two cache lines so that shards used by different threads
/// never share one (the lock word and counters are written on every
/// registration).
#[repr(align(128))]
pub(crate) struct ShardInner {
    pub(crate) index: u64,
    pub(crate) shared: Arc<Common>,
    pub(crate) state: Mutex<ShardState>,
}

impl ShardInner {
    pub(crate) fn lock(&self) -> MutexGuard<'_, ShardState> {
        // A panic while holding the lock cannot leave the state torn in a
        // way that matters for counting, so poisoning is ignored.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Unregisters `id` if it is live here; false (logged at debug level)
    /// when it is not.
    pub(crate) fn unregister(&self, id: u64) -> bool {
        let now = self.shared.now_nanos();
        let mut st = self.lock();
        let Some(entry) = st.live.take(&id) else {
            drop(st);
            debug!(self.shared.log, "unregister of an unknown connection ignored"; "conn" => id);
            return false;
        };
        let secs = now.saturating_sub(entry.started) as f64 / 1e9;
        let stats = st.kind_mut(entry.kind);
        stats.live = stats.live.saturating_sub(1);
        stats.observe(secs);
        let empty = st.live.is_empty();
        // One atomic operation: cheaper under the (uncontended) shard lock
        // than a reference count taken to do it after.
        if let Some(Some(admission)) = st.admissions.get(entry.kind as usize) {
            admission.leave();
        }
        drop(st);
        if entry.net_family != 0 {
            let key = NetKey {
                kind: entry.kind,
                family: entry.net_family,
                net: entry.net,
            };
            self.shared.addresses.release(key, now);
        }
        if empty && self.shared.done_waiters.load(Ordering::SeqCst) > 0 {
            self.shared.done.notify_waiters();
        }
        true
    }
}

/// The registry's shard for one arbiter: register connections here from
/// the arbiter that serves them.
///
/// Cheap to clone; `Send` and `Sync`, so it can be made on one thread and
/// moved to the arbiter that uses it. Using one shard from several threads
/// is correct, only slower. Get one per arbiter from
/// [`RegistryHandle::new_shard`](crate::RegistryHandle::new_shard), or the
/// calling thread's from
/// [`RegistryHandle::current_thread_shard`](crate::RegistryHandle::current_thread_shard).
#[derive(Clone)]
pub struct RegistryShard {
    pub(crate) inner: Arc<ShardInner>,
}

impl std::fmt::Debug for RegistryShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryShard")
            .field("index", &self.inner.index)
            .finish()
    }
}

impl RegistryShard {
    /// Registers a connection of `kind` and returns its guard: no message,
    /// no round trip. Dropping the guard unregisters it. After the registry
    /// was shut down the connection is registered already aborted (and
    /// counted as aborted).
    ///
    /// No limit is checked (the connection is counted towards its
    /// listener's `max_connections` all the same): use
    /// [`admit`](Self::admit) for connections from outside.
    pub fn register(&self, kind: &ConnKind) -> ConnectionGuard {
        let kind = self.inner.shared.resolve(kind);
        kind.admission.live.fetch_add(1, Ordering::AcqRel);
        self.insert(&kind, None)
    }

    /// Admits a connection of `kind` from `peer` under the listener's
    /// [`Limits`](crate::Limits) and registers it, or refuses it: a
    /// refused connection is never live, and is counted in the snapshot's
    /// [`KindCount::refused`](crate::KindCount) and
    /// `<prefix>_refused_total{reason}`. Without an address (`None`, a
    /// Unix-domain peer) only `max_connections` applies.
    ///
    /// The check is part of the registration, on this shard: no message.
    /// How each limit stays exact across shards is told in the
    /// [`Limits`](crate::Limits) documentation.
    ///
    /// ```
    /// use std::net::{IpAddr, Ipv6Addr};
    /// use actix_lifecycle::{ConnectionRegistry, Limits, RefuseReason};
    ///
    /// let handle = ConnectionRegistry::builder().build().unwrap().handle();
    /// let kind = handle.kind("smtp", "mx");
    /// handle.set_limits(&kind, Some(Limits::none().max_connections(3).max_per_address(1)));
    /// let shard = handle.new_shard();
    /// let host = |last| Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last)));
    /// let other = |net| Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, net, 0, 0, 0, 1)));
    /// let a = shard.admit(&kind, host(1)).unwrap();
    /// // Another address of the same /64 is the same client network.
    /// assert_eq!(shard.admit(&kind, host(2)).unwrap_err(), RefuseReason::AddressFull);
    /// let b = shard.admit(&kind, other(2)).unwrap();
    /// let c = shard.admit(&kind, other(3)).unwrap();
    /// assert_eq!(shard.admit(&kind, other(4)).unwrap_err(), RefuseReason::ListenerFull);
    /// assert_eq!(handle.live(), 3);
    /// # drop((a, b, c));
    /// ```
    pub fn admit(
        &self,
        kind: &ConnKind,
        peer: Option<IpAddr>,
    ) -> Result<ConnectionGuard, RefuseReason> {
        let kind = self.inner.shared.resolve(kind);
        let net = self.take_places(&kind, peer)?;
        Ok(self.insert(&kind, net))
    }

    /// Admits a connection of `kind` from `peer` under the listener's
    /// [`Limits`](crate::Limits) like [`admit`](Self::admit), but does not
    /// register it: it holds its place on the listener (and on its client
    /// network) until the returned [`Admission`] drops, and is in neither
    /// the registry's gauges nor its snapshot, `Done` or abort. Refusals
    /// are counted as by `admit`.
    ///
    /// For connections whose lifetime something else owns and that must
    /// not hold the drain, such as an HTTP server's keep-alive connections
    /// to health and metrics endpoints.
    ///
    /// ```
    /// use actix_lifecycle::{ConnectionRegistry, Limits, RefuseReason};
    ///
    /// let handle = ConnectionRegistry::builder().build().unwrap().handle();
    /// let kind = handle.kind("http", "ops");
    /// handle.set_limits(&kind, Some(Limits::none().max_connections(1)));
    /// let shard = handle.new_shard();
    /// let first = shard.admit_untracked(&kind, None).unwrap();
    /// assert_eq!(handle.live(), 0, "not tracked");
    /// assert_eq!(shard.admit_untracked(&kind, None).unwrap_err(), RefuseReason::ListenerFull);
    /// drop(first);
    /// assert!(shard.admit_untracked(&kind, None).is_ok());
    /// ```
    pub fn admit_untracked(
        &self,
        kind: &ConnKind,
        peer: Option<IpAddr>,
    ) -> Result<Admission, RefuseReason> {
        let shared = &self.inner.shared;
        let kind = shared.resolve(kind);
        let net = self.take_places(&kind, peer)?;
        Ok(Admission {
            common: Arc::clone(shared),
            admission: Arc::clone(&kind.admission),
            net,
        })
    }

    /// Takes a place on the listener of `kind` (resolved) and, where a
    /// per-address limit or rate applies, on the client network of `peer`;
    /// or counts the refusal and says why.
    fn take_places(
        &self,
        kind: &ConnKind,
        peer: Option<IpAddr>,
    ) -> Result<Option<NetKey>, RefuseReason> {
        let shared = &self.inner.shared;
        let limits = kind.admission.effective();
        if !kind.admission.take_place(limits.max_connections) {
            return Err(self.count_refused(kind, RefuseReason::ListenerFull));
        }
        if let (true, Some(ip)) = (limits.per_address(), peer) {
            let key = limits.net_key(kind.index, ip);
            if let Err(reason) = shared.addresses.acquire(key, &limits, shared.now_nanos()) {
                kind.admission.leave();
                return Err(self.count_refused(kind, reason));
            }
            return Ok(Some(key));
        }
        Ok(None)
    }

    /// Counts a connection of `kind` refused for `reason` outside
    /// [`admit`](Self::admit) (the accept loop's
    /// [`RefuseReason::Descriptors`]). Returns `reason`.
    pub fn refuse(&self, kind: &ConnKind, reason: RefuseReason) -> RefuseReason {
        let kind = self.inner.shared.resolve(kind);
        self.count_refused(&kind, reason)
    }

    fn count_refused(&self, kind: &ConnKind, reason: RefuseReason) -> RefuseReason {
        let mut st = self.inner.lock();
        st.kind_mut(kind.index).refused[reason.index()] += 1;
        drop(st);
        debug!(self.inner.shared.log, "connection refused";
            "reason" => reason.as_str(), "protocol" => &*kind.protocol, "listener" => &*kind.listener);
        reason
    }

    /// Inserts an entry for a connection whose place on its listener is
    /// taken (and, with `net`, in its client network).
    fn insert(&self, kind: &ConnKind, net: Option<NetKey>) -> ConnectionGuard {
        let shared = &self.inner.shared;
        let kind_index = kind.index;
        let started = shared.now_nanos();
        let mut st = self.inner.lock();
        // Read under the shard lock: Shutdown sets the flag, then visits
        // every shard under its lock, so a connection is either visited or
        // sees the flag here.
        let shut_down = shared.shut_down.load(Ordering::Acquire);
        st.next_seq += 1;
        let id = (self.inner.index << SEQ_BITS) | st.next_seq;
        let entry = Arc::new(Entry::new(id, started, kind_index, net));
        st.live.insert(Live(Arc::clone(&entry)));
        let slot = kind_index as usize;
        if st.admissions.len() <= slot {
            st.admissions.resize_with(slot + 1, || None);
        }
        if st.admissions[slot].is_none() {
            st.admissions[slot] = Some(Arc::clone(&kind.admission));
        }
        let stats = st.kind_mut(kind_index);
        stats.live += 1;
        stats.accepted += 1;
        if shut_down {
            st.abort(id);
        }
        drop(st);
        if shut_down {
            info!(shared.log, "connection registered after shutdown: aborted at once";
                "conn" => id, "protocol" => &*kind.protocol, "listener" => &*kind.listener);
        }
        ConnectionGuard {
            shard: Arc::clone(&self.inner),
            entry,
        }
    }
}

/// Proof that a connection is registered; dropping it unregisters the
/// connection (also when a handler panics and its future is dropped while
/// unwinding).
#[derive(Debug)]
pub struct ConnectionGuard {
    shard: Arc<ShardInner>,
    entry: Arc<Entry>,
}

impl std::fmt::Debug for ShardInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardInner")
            .field("index", &self.index)
            .finish()
    }
}

impl ConnectionGuard {
    /// The connection id, unique within its registry.
    pub fn id(&self) -> u64 {
        self.entry.id
    }

    /// True once the connection was aborted.
    pub fn is_aborted(&self) -> bool {
        self.entry.is_aborted()
    }

    pub(crate) fn entry(&self) -> &Entry {
        &self.entry
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.shard.unregister(self.entry.id);
    }
}

/// A connection's place under its listener's limits, taken by
/// [`RegistryShard::admit_untracked`]: dropping it gives the place back.
#[must_use = "the place is given back when the admission drops"]
pub struct Admission {
    common: Arc<Common>,
    admission: Arc<KindAdmission>,
    net: Option<NetKey>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("per_address", &self.net.is_some())
            .finish()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.admission.leave();
        if let Some(key) = self.net {
            self.common.addresses.release(key, self.common.now_nanos());
        }
    }
}
