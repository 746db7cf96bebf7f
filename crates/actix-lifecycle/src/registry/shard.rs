//! Per-arbiter shards of the registry and the guards they hand out.
//!
//! A shard is used by the arbiter it was made for, so its lock is never
//! contended on the accept path: registering costs one allocation, one
//! uncontended lock and a hash insert, with no message and no shared atomic.
//! The [`ConnectionRegistry`](crate::ConnectionRegistry) visits every shard
//! for `Shutdown`, `Done`, `Snapshot` and the gauges.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use slog::{debug, info};

use super::abort::{AbortState, Tracked};
use super::{Common, ConnKind};
use crate::metrics::KindStats;

/// Bits of a connection id that hold the per-shard sequence number; the
/// bits above hold the shard index.
pub(crate) const SEQ_BITS: u32 = 40;

/// What the registry keeps per live connection (shared with its guard and
/// its [`Tracked`] stream).
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: u64,
    /// Nanoseconds since the registry's epoch.
    pub(crate) started: u64,
    pub(crate) kind: u32,
    pub(crate) abort: AbortState,
}

/// Ids are unique sequence numbers: a multiplicative hash spreads them.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Default)]
pub(crate) struct ShardState {
    next_seq: u64,
    pub(crate) live: HashMap<u64, Arc<Entry>, BuildHasherDefault<IdHasher>>,
    /// Indexed by [`ConnKind`] index.
    pub(crate) kinds: Vec<KindStats>,
}

impl ShardState {
    pub(crate) fn kind_mut(&mut self, kind: u32) -> &mut KindStats {
        let i = kind as usize;
        if self.kinds.len() <= i {
            self.kinds.resize_with(i + 1, KindStats::default);
        }
        &mut self.kinds[i]
    }
}

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

    fn unregister(&self, id: u64) -> bool {
        let now = self.shared.now_nanos();
        let mut st = self.lock();
        let Some(entry) = st.live.remove(&id) else {
            drop(st);
            debug!(self.shared.log, "unregister of an unknown connection ignored"; "conn" => id);
            return false;
        };
        let secs = now.saturating_sub(entry.started) as f64 / 1e9;
        let stats = st.kind_mut(entry.kind);
        stats.live = stats.live.saturating_sub(1);
        stats.observe(secs);
        let empty = st.live.is_empty();
        drop(st);
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
/// [`RegistryHandle::shard`](crate::RegistryHandle::shard).
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
    pub fn register(&self, kind: &ConnKind) -> ConnectionGuard {
        let shared = &self.inner.shared;
        let kind_index = shared.kind_index(kind);
        let started = shared.now_nanos();
        let mut st = self.inner.lock();
        // Read under the shard lock: Shutdown sets the flag, then visits
        // every shard under its lock, so a connection is either visited or
        // sees the flag here.
        let aborted = shared.shut_down.load(Ordering::Acquire);
        st.next_seq += 1;
        let id = (self.inner.index << SEQ_BITS) | st.next_seq;
        let entry = Arc::new(Entry {
            id,
            started,
            kind: kind_index,
            abort: AbortState::new(aborted),
        });
        st.live.insert(id, Arc::clone(&entry));
        let stats = st.kind_mut(kind_index);
        stats.live += 1;
        stats.accepted += 1;
        if aborted {
            stats.aborted += 1;
        }
        drop(st);
        if aborted {
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
        self.entry.abort.is_aborted()
    }

    /// Wraps the connection's stream so that an abort ends its I/O
    /// persistently; the stream then holds this guard (see [`Tracked`]).
    pub fn track<S>(self, stream: S) -> Tracked<S> {
        Tracked::new(stream, self)
    }

    pub(crate) fn abort(&self) -> &AbortState {
        &self.entry.abort
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.shard.unregister(self.entry.id);
    }
}

pub(crate) fn unregister_by_id(shard: &ShardInner, id: u64) -> bool {
    shard.unregister(id)
}
