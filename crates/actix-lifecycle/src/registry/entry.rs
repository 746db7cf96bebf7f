//! What the registry keeps per live connection, and the table slot that
//! finds it by id.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::task::AtomicWaker;

use super::admission::NetKey;

/// What the registry keeps per live connection (shared with its guard and
/// its [`Tracked`] stream).
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: u64,
    /// Nanoseconds since the registry's epoch.
    pub(crate) started: u64,
    /// The client network it is counted under (see `net_family`).
    pub(crate) net: u64,
    pub(crate) kind: u32,
    /// Set once, never cleared: the connection is aborted.
    pub(crate) aborted: AtomicBool,
    /// 4 or 6 when the connection is counted in the per-address table
    /// under `net`; 0 when not.
    pub(crate) net_family: u8,
    /// The task waiting to read, woken by an abort.
    pub(crate) read_waker: AtomicWaker,
    /// The task waiting to write or flush, woken by an abort.
    pub(crate) write_waker: AtomicWaker,
}

/// The abort half of an entry: the flag and the tasks to wake when it is
/// set. Kept as fields of [`Entry`] (not a nested struct) so the flag
/// shares padding with the entry's other small fields. The flag is set by
/// the shard module's `mark_aborted`, which also counts it.
impl Entry {
    /// A live, not aborted entry of kind `kind`, registered at `started`
    /// (nanoseconds since the registry's epoch), counted under `net` when
    /// given.
    pub(crate) fn new(id: u64, started: u64, kind: u32, net: Option<NetKey>) -> Entry {
        Entry {
            id,
            started,
            net: net.map_or(0, |n| n.net),
            kind,
            aborted: AtomicBool::new(false),
            net_family: net.map_or(0, |n| n.family),
            read_waker: AtomicWaker::new(),
            write_waker: AtomicWaker::new(),
        }
    }

    /// True once the connection was aborted.
    pub(crate) fn is_aborted(&self) -> bool {
        self.aborted.load(Ordering::Acquire)
    }

    /// Sets the flag; returns true the first time. Only the shard module's
    /// `mark_aborted` calls it, under the shard lock, so the count follows
    /// the flag.
    pub(super) fn set_aborted(&self) -> bool {
        !self.aborted.swap(true, Ordering::AcqRel)
    }

    /// Wakes the tasks waiting to read or write, so they see the flag.
    pub(crate) fn wake(&self) {
        self.read_waker.wake();
        self.write_waker.wake();
    }
}

/// A live entry in its shard's table, hashed and compared by its id.
///
/// The table is a set of entries rather than a map from id to entry: the
/// id already lives in the entry, so a slot holds one pointer (8 bytes)
/// instead of a key and a pointer (16 bytes). Lookups by id go through
/// [`Borrow<u64>`]; `Hash` and `Eq` are those of the id, as `Borrow`
/// requires.
#[derive(Debug, Clone)]
pub(crate) struct Live(pub(crate) Arc<Entry>);

impl Hash for Live {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl PartialEq for Live {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for Live {}

impl Borrow<u64> for Live {
    fn borrow(&self) -> &u64 {
        &self.0.id
    }
}

impl std::ops::Deref for Live {
    type Target = Entry;

    fn deref(&self) -> &Entry {
        &self.0
    }
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
