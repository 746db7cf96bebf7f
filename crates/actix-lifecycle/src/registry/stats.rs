//! What each shard counts per (protocol, listener): the one owner of the
//! counts that the snapshot and the prometheus collector read, through
//! [`Shared::stats_by_kind`](super::Shared::stats_by_kind).

/// Upper bounds (seconds) of the connection duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];

/// Per (protocol, listener) statistics of one shard. Aligned so that the
/// statistics of shards on different threads never share a cache line.
#[derive(Debug, Clone, Default)]
#[repr(align(128))]
pub(crate) struct KindStats {
    pub(crate) live: u64,
    pub(crate) accepted: u64,
    pub(crate) aborted: u64,
    /// Refusals by `RefuseReason::index`.
    pub(crate) refused: [u64; super::admission::REASONS],
    pub(crate) duration_count: u64,
    pub(crate) duration_sum: f64,
    /// Non-cumulative counts per bucket of [`DURATION_BUCKETS`].
    pub(crate) duration_buckets: [u64; DURATION_BUCKETS.len()],
}

impl KindStats {
    pub(crate) fn observe(&mut self, seconds: f64) {
        self.duration_count += 1;
        self.duration_sum += seconds;
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| seconds <= *b) {
            self.duration_buckets[i] += 1;
        }
    }

    pub(crate) fn add(&mut self, other: &KindStats) {
        self.live += other.live;
        self.accepted += other.accepted;
        self.aborted += other.aborted;
        for (a, b) in self.refused.iter_mut().zip(other.refused.iter()) {
            *a += b;
        }
        self.duration_count += other.duration_count;
        self.duration_sum += other.duration_sum;
        for (a, b) in self
            .duration_buckets
            .iter_mut()
            .zip(other.duration_buckets.iter())
        {
            *a += b;
        }
    }
}

/// A shard's statistics, indexed by [`ConnKind`](super::ConnKind) index;
/// grows on first use of a kind.
#[derive(Debug, Default)]
pub(crate) struct KindTable(Vec<KindStats>);

impl KindTable {
    /// The statistics of kind `kind`, created at zero when first used.
    pub(crate) fn get_mut(&mut self, kind: u32) -> &mut KindStats {
        let i = kind as usize;
        if self.0.len() <= i {
            self.0.resize_with(i + 1, KindStats::default);
        }
        &mut self.0[i]
    }

    /// Every kind's statistics, in kind order.
    pub(crate) fn as_slice(&self) -> &[KindStats] {
        &self.0
    }
}
