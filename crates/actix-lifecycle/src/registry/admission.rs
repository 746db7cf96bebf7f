//! Admission control: the limits checked where a connection registers.
//!
//! A connection is admitted or refused by
//! [`RegistryShard::admit`](crate::RegistryShard::admit), as part of its
//! registration: no message, no round trip. Three limits, each optional:
//!
//! * **per listener** (`max_connections`): one atomic counter per
//!   (protocol, listener), shared by every shard. It is incremented on
//!   every registration (limits on or off) and decremented when the guard
//!   drops, so the count is exact at any moment, also when a limit is set
//!   at run time. A registration adds first and checks the value it got:
//!   the count can never pass the limit, however many arbiters register at
//!   once.
//! * **per client network** (`max_per_address`, counted per listener):
//!   the client's address masked to a prefix (IPv4 /32 and IPv6 /64 by
//!   default) keys a table split into [`STRIPES`] stripes by the hash of
//!   the network, each under its own short lock (a hash lookup and two
//!   integer updates). Two arbiters wait for each other only when their
//!   clients hash to one stripe. The table is touched only while a
//!   per-address limit or rate is set: with limits off, admission costs one
//!   uncontended atomic add and a few relaxed loads.
//! * **rate per client network** (`rate_per_address`, e.g. `60/min`): a
//!   token bucket kept in the same table entry (as a "theoretical arrival
//!   time", GCRA): a network may open `count` connections at once, then one
//!   more every `per / count`. Only admitted connections take a token.
//!
//! The table holds a network only while it has a live connection or its
//! bucket is not yet full again; it is swept when a stripe grows past its
//! share of [`MAX_TRACKED_NETWORKS`], and when that is not enough, networks
//! without a live connection are forgotten (their bucket starts full
//! again). A client rotating through addresses therefore cannot grow it
//! past that bound plus the networks with live connections. A stripe kept
//! large by networks with live connections is swept again only after half
//! its share of new networks, not for every new one.
//!
//! A per-address limit or rate set at run time counts the connections
//! registered from then on; the per-listener count is always exact. A rate
//! loosened at run time reaches a network its old rate throttles at once:
//! its bucket is brought to the new rate (empty) at its next attempt,
//! instead of staying up to one old period ahead.
//!
//! The address admitted is the one given to `admit`: the peer of the
//! accepted socket today. A listener that learns the real client address
//! later (the PROXY protocol, read after the accept) admits after reading
//! it, with that address.

mod limits;
mod reason;
mod table;

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{fence, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

pub use limits::{Limits, Rate, MAX_PREFIX_V4, MAX_PREFIX_V6};
pub(crate) use reason::REASONS;
pub use reason::{RefuseReason, RefusedCounts};
pub(crate) use table::{AddressTable, NetKey};
pub use table::{MAX_TRACKED_NETWORKS, STRIPES};

/// `u32::MAX` in a limit word: no limit.
const UNLIMITED: u32 = u32::MAX;

/// The admission state of one (protocol, listener): its live count and
/// its effective limits, read without a lock on the accept path.
///
/// Aligned to two cache lines: `live` is written by every registration of
/// the listener, on any arbiter, and must not share a line with another
/// listener's.
#[repr(align(128))]
pub(crate) struct KindAdmission {
    /// Live connections of this kind in all shards.
    pub(crate) live: AtomicU64,
    max_connections: AtomicU32,
    max_per_address: AtomicU32,
    /// IPv4 prefix in the high byte, IPv6 in the low one.
    prefixes: AtomicU16,
    /// 0: no rate.
    rate_count: AtomicU32,
    rate_per: AtomicU64,
    /// Odd while the limit words above are being changed, bumped before
    /// and after (a sequence lock; writers are serialised by `own`): a
    /// reader never combines a rate's new count with its old period.
    version: AtomicU32,
    /// Limits set for this kind; `None` follows the registry default.
    own: Mutex<Option<Limits>>,
}

impl fmt::Debug for KindAdmission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KindAdmission")
            .field("live", &self.live.load(Ordering::Relaxed))
            .field("limits", &self.limits())
            .finish()
    }
}

/// The limits one registration checks, read once.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Effective {
    pub(crate) max_connections: u32,
    max_per_address: u32,
    prefix_v4: u8,
    prefix_v6: u8,
    rate_count: u32,
    rate_per: u64,
}

impl Effective {
    /// The network of `ip` on the listener of kind index `kind`.
    pub(crate) fn net_key(&self, kind: u32, ip: IpAddr) -> NetKey {
        NetKey::new(kind, ip, self.prefix_v4, self.prefix_v6)
    }

    /// True when the per-address table is involved.
    pub(crate) fn per_address(&self) -> bool {
        self.max_per_address != UNLIMITED || self.rate_count != 0
    }
}

impl KindAdmission {
    pub(crate) fn new(limits: Limits) -> Self {
        let a = KindAdmission {
            live: AtomicU64::new(0),
            max_connections: AtomicU32::new(UNLIMITED),
            max_per_address: AtomicU32::new(UNLIMITED),
            prefixes: AtomicU16::new(0),
            rate_count: AtomicU32::new(0),
            rate_per: AtomicU64::new(0),
            version: AtomicU32::new(0),
            own: Mutex::new(None),
        };
        a.apply(&limits);
        a
    }

    /// Stores `l` as the limit words. Callers hold `own` (or own `self`).
    fn apply(&self, l: &Limits) {
        let r = Ordering::Relaxed;
        self.version.fetch_add(1, r);
        fence(Ordering::Release);
        self.max_connections
            .store(l.max_connections.unwrap_or(UNLIMITED), r);
        self.max_per_address
            .store(l.max_per_address.unwrap_or(UNLIMITED), r);
        self.prefixes
            .store(u16::from(l.prefix_v4) << 8 | u16::from(l.prefix_v6), r);
        self.rate_per.store(l.rate.map_or(0, |r| r.per_nanos()), r);
        self.rate_count.store(l.rate.map_or(0, |r| r.count), r);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// Sets this kind's own limits (`None`: follow the registry default,
    /// which `default` reads). The default is read under this kind's lock,
    /// so a default changed meanwhile is either read here or applied by
    /// [`default_changed`](Self::default_changed) after.
    pub(crate) fn set_own(&self, own: Option<Limits>, default: impl FnOnce() -> Limits) {
        let mut slot = self.own.lock().unwrap_or_else(PoisonError::into_inner);
        *slot = own;
        self.apply(&own.unwrap_or_else(default));
    }

    /// Applies the registry default (which `default` reads, under this
    /// kind's lock) unless this kind has its own.
    pub(crate) fn default_changed(&self, default: impl FnOnce() -> Limits) {
        let slot = self.own.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            self.apply(&default());
        }
    }

    /// The limits in force.
    pub(crate) fn limits(&self) -> Limits {
        let e = self.effective();
        let opt = |n: u32| (n != UNLIMITED).then_some(n);
        Limits {
            max_connections: opt(e.max_connections),
            max_per_address: opt(e.max_per_address),
            prefix_v4: e.prefix_v4,
            prefix_v6: e.prefix_v6,
            rate: (e.rate_count != 0).then(|| Rate {
                count: e.rate_count,
                per: Duration::from_nanos(e.rate_per),
            }),
        }
    }

    /// The limits in force, as plain numbers, all from one change (a
    /// limit changed at this instant applies from the next registration).
    pub(crate) fn effective(&self) -> Effective {
        let r = Ordering::Relaxed;
        loop {
            let before = self.version.load(Ordering::Acquire);
            let prefixes = self.prefixes.load(r);
            let e = Effective {
                max_connections: self.max_connections.load(r),
                max_per_address: self.max_per_address.load(r),
                prefix_v4: (prefixes >> 8) as u8,
                prefix_v6: (prefixes & 0xff) as u8,
                rate_count: self.rate_count.load(r),
                rate_per: self.rate_per.load(r),
            };
            fence(Ordering::Acquire);
            if before % 2 == 0 && self.version.load(r) == before {
                return e;
            }
            std::hint::spin_loop();
        }
    }

    /// Takes a place on the listener: `false` when it is full (nothing
    /// taken then).
    pub(crate) fn take_place(&self, max: u32) -> bool {
        let before = self.live.fetch_add(1, Ordering::AcqRel);
        if max != UNLIMITED && before >= u64::from(max) {
            self.live.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Gives a place back.
    pub(crate) fn leave(&self) {
        // Never below zero: every leave follows a successful take_place.
        let _ = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    #[test]
    fn a_reader_never_mixes_two_changes_of_the_limits() {
        let rate = |count, secs| Rate::new(count, Duration::from_secs(secs)).unwrap();
        let a = Limits::none()
            .max_connections(5)
            .rate_per_address(rate(5, 1));
        let b = Limits::none()
            .max_connections(7)
            .address_prefix(24, 48)
            .unwrap();
        let kind = Arc::new(KindAdmission::new(a));
        let flips = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (kind, flips, stop) = (Arc::clone(&kind), Arc::clone(&flips), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = flips.load(Ordering::Relaxed);
                    kind.set_own(Some(if n % 2 == 0 { b } else { a }), Limits::none);
                    flips.store(n + 1, Ordering::Relaxed);
                }
            })
        };
        let seen = |e: Effective| {
            (
                e.max_connections,
                e.rate_count,
                e.rate_per,
                e.prefix_v4,
                e.prefix_v6,
            )
        };
        let expected = [a, b].map(|l| seen(KindAdmission::new(l).effective()));
        let began = std::time::Instant::now();
        let mut reads = 0u64;
        // Read while the writer changes the limits 20,000 times.
        while flips.load(Ordering::Relaxed) < 20_000 {
            let e = seen(kind.effective());
            assert!(expected.contains(&e), "limits read half changed: {e:?}");
            reads += 1;
            assert!(
                began.elapsed().as_secs() < 30,
                "the writer made too few changes"
            );
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(reads > 0);
    }

    #[test]
    fn a_default_changed_while_a_kind_is_set_back_to_it_is_not_lost() {
        // The registry default changes while a listener is being set back
        // to it: the change must reach the listener whichever reads the
        // default first. The default is read under the kind's lock, so a
        // change that lands meanwhile is applied right after.
        let own = Limits::none().max_connections(1);
        let (old, new) = (
            Limits::none().max_connections(100),
            Limits::none().max_connections(200),
        );
        let default = Arc::new(Mutex::new(old));
        let kind = Arc::new(KindAdmission::new(own));
        kind.set_own(Some(own), || old);
        let mut changer = None;
        kind.set_own(None, || {
            let read = *default.lock().unwrap();
            // The registry's set_default_limits, on another thread: store
            // the new default, then tell every kind.
            let (kind, default) = (Arc::clone(&kind), Arc::clone(&default));
            changer = Some(std::thread::spawn(move || {
                *default.lock().unwrap() = new;
                kind.default_changed(|| *default.lock().unwrap());
            }));
            std::thread::sleep(Duration::from_millis(50));
            read
        });
        changer.unwrap().join().unwrap();
        assert_eq!(kind.limits(), new);
    }
}
