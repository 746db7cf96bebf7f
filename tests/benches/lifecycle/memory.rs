//! Memory per tracked connection: a counting global allocator (of this
//! bench binary only: no library state) and the count of open fds.

use crate::Res;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU32, Ordering};

/// The system allocator, counting live bytes while [`Counting::start`]ed.
///
/// Counting is off by default so the throughput scenarios pay one relaxed
/// load per allocation, not a shared atomic add.
pub(crate) struct Counting {
    enabled: AtomicBool,
    live: AtomicIsize,
    /// Allocations by size, for sizes up to [`SIZES`] bytes.
    by_size: [AtomicU32; SIZES + 1],
}

/// Largest allocation size counted one by one in [`Counting`].
const SIZES: usize = 512;

impl Counting {
    pub(crate) const fn new() -> Self {
        Self {
            enabled: AtomicBool::new(false),
            live: AtomicIsize::new(0),
            by_size: [const { AtomicU32::new(0) }; SIZES + 1],
        }
    }

    /// Starts counting from zero.
    pub(crate) fn start(&self) {
        self.live.store(0, Ordering::SeqCst);
        for n in &self.by_size {
            n.store(0, Ordering::SeqCst);
        }
        self.enabled.store(true, Ordering::SeqCst);
    }

    /// Bytes allocated and not freed since [`start`](Self::start), by any
    /// thread of the process.
    pub(crate) fn live(&self) -> isize {
        self.live.load(Ordering::SeqCst)
    }

    /// The most frequent allocation size (up to 512 bytes) since
    /// [`start`](Self::start) and how many times it was allocated.
    pub(crate) fn most_common_size(&self) -> (usize, u32) {
        self.by_size
            .iter()
            .enumerate()
            .map(|(size, n)| (size, n.load(Ordering::SeqCst)))
            .max_by_key(|&(_, n)| n)
            .unwrap_or((0, 0))
    }

    pub(crate) fn stop(&self) {
        self.enabled.store(false, Ordering::SeqCst);
    }

    fn add(&self, bytes: usize) {
        if self.enabled.load(Ordering::Relaxed) {
            self.live.fetch_add(bytes as isize, Ordering::Relaxed);
        }
    }

    fn count(&self, bytes: usize) {
        if self.enabled.load(Ordering::Relaxed) {
            if let Some(n) = self.by_size.get(bytes) {
                n.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn sub(&self, bytes: usize) {
        if self.enabled.load(Ordering::Relaxed) {
            self.live.fetch_sub(bytes as isize, Ordering::Relaxed);
        }
    }
}

// SAFETY: every method forwards to the system allocator unchanged; the
// counters are only atomics beside it and never touch the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.add(layout.size());
        self.count(layout.size());
        // SAFETY: same contract as our caller's: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.add(layout.size());
        self.count(layout.size());
        // SAFETY: same contract as our caller's: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.sub(layout.size());
        // SAFETY: same contract as our caller's: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.sub(layout.size());
        self.add(new_size);
        // SAFETY: same contract as our caller's: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Open file descriptors of this process (entries of /proc/self/fd, less
/// the one the listing itself holds).
pub(crate) fn open_fds() -> Res<usize> {
    let n = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("cannot list /proc/self/fd to count fds: {e}"))?
        .count();
    Ok(n.saturating_sub(1))
}

/// Live bytes per entry of mox's design: a `Mutex<HashMap>` holding `n`
/// entries (connection id → protocol, listener, start time).
pub(crate) fn mutex_hashmap_bytes(counting: &Counting, n: usize) -> Res<f64> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Instant;
    counting.start();
    let map: Mutex<HashMap<u64, (&'static str, &'static str, Instant)>> = Mutex::default();
    for id in 0..n as u64 {
        map.lock()
            .map_err(|_| "poisoned")?
            .insert(id, ("smtp", "smtp", Instant::now()));
    }
    let bytes = counting.live();
    counting.stop();
    drop(std::hint::black_box(map));
    Ok(bytes as f64 / n as f64)
}
