//! The per-address table: live connections and token buckets per client
//! network, in stripes each under its own short lock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use super::{Effective, RefuseReason, UNLIMITED};

/// Stripes of the per-address table.
pub const STRIPES: usize = 64;
/// Networks the per-address table keeps without a live connection, at
/// most (all listeners together), besides those that still had live
/// connections when their stripe was last swept. Networks with live
/// connections are kept regardless.
pub const MAX_TRACKED_NETWORKS: usize = 65_536;
const STRIPE_CAP: usize = MAX_TRACKED_NETWORKS / STRIPES;

/// A client network of one listener: the key of the per-address table
/// (also kept in the connection's entry, so that it is released under the
/// key it was counted with, whatever the prefix is by then).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct NetKey {
    pub(crate) kind: u32,
    /// 4 or 6.
    pub(crate) family: u8,
    /// The masked address: IPv4 in the low 32 bits, IPv6's first 64 bits.
    pub(crate) net: u64,
}

impl NetKey {
    pub(crate) fn new(kind: u32, ip: IpAddr, prefix_v4: u8, prefix_v6: u8) -> NetKey {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(v4) => NetKey {
                kind,
                family: 4,
                net: u64::from(mask32(u32::from(v4), prefix_v4)),
            },
            IpAddr::V6(v6) => NetKey {
                kind,
                family: 6,
                net: mask64((u128::from(v6) >> 64) as u64, prefix_v6),
            },
        }
    }

    fn stripe(&self) -> usize {
        let h = (self.net ^ (u64::from(self.kind) << 40) ^ u64::from(self.family))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> 58) as usize % STRIPES
    }
}

fn mask32(bits: u32, prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p if p >= 32 => bits,
        p => bits & (u32::MAX << (32 - u32::from(p))),
    }
}

fn mask64(bits: u64, prefix: u8) -> u64 {
    match prefix {
        0 => 0,
        p if p >= 64 => bits,
        p => bits & (u64::MAX << (64 - u32::from(p))),
    }
}

/// One network's state.
#[derive(Debug, Clone, Copy, Default)]
struct NetState {
    live: u32,
    /// Token bucket as GCRA's theoretical arrival time (nanoseconds since
    /// the registry's epoch): the bucket is full when it is not after now.
    tat: u64,
}

/// Admits one more connection of a network under `max` live ones and a
/// rate of `rate_count` per `rate_per` nanoseconds (0: no rate), at `now`.
fn admit_one(
    st: &mut NetState,
    max: u32,
    rate_count: u32,
    rate_per: u64,
    now: u64,
) -> Result<(), RefuseReason> {
    if max != UNLIMITED && st.live >= max {
        return Err(RefuseReason::AddressFull);
    }
    if rate_count != 0 {
        // Under an unchanged rate the bucket runs at most one period
        // ahead (give or take the instants at which the callers read the
        // clock); after the rate was loosened it may run further (the old
        // period was longer): start that network from an empty bucket of
        // the new rate instead of holding it to the old one.
        st.tat = st.tat.min(now.saturating_add(rate_per));
        let interval = (rate_per / u64::from(rate_count)).max(1);
        let next = st.tat.max(now).saturating_add(interval);
        if next - now > rate_per {
            return Err(RefuseReason::Rate);
        }
        st.tat = next;
    }
    st.live += 1;
    Ok(())
}

/// The per-address table of a registry: every listener's client networks,
/// striped by network.
pub(crate) struct AddressTable {
    stripes: Box<[Mutex<Stripe>]>,
}

/// One stripe of the table.
#[derive(Default)]
struct Stripe {
    map: HashMap<NetKey, NetState>,
    /// The size at which a new network sweeps the stripe (at least
    /// [`STRIPE_CAP`]): half of it above what the last sweep kept, so that
    /// a stripe full of networks with live connections is not swept again
    /// for every new network.
    sweep_at: usize,
    /// Sweeps so far, for the tests.
    #[cfg(test)]
    sweeps: usize,
}

impl Default for AddressTable {
    fn default() -> Self {
        AddressTable {
            stripes: (0..STRIPES).map(|_| Mutex::default()).collect(),
        }
    }
}

impl AddressTable {
    fn stripe(&self, key: &NetKey) -> std::sync::MutexGuard<'_, Stripe> {
        self.stripes[key.stripe()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more connection of `key`, or says why not.
    pub(crate) fn acquire(&self, key: NetKey, e: &Effective, now: u64) -> Result<(), RefuseReason> {
        let mut stripe = self.stripe(&key);
        let known = stripe.map.contains_key(&key);
        if !known && stripe.map.len() >= stripe.sweep_at.max(STRIPE_CAP) {
            sweep(&mut stripe.map, now);
            #[cfg(test)]
            {
                stripe.sweeps += 1;
            }
            stripe.sweep_at = stripe.map.len() + STRIPE_CAP / 2;
        }
        let mut st = stripe.map.get(&key).copied().unwrap_or_default();
        let admitted = admit_one(&mut st, e.max_per_address, e.rate_count, e.rate_per, now);
        // A refusal changes a known network's state only to bring its
        // bucket into a loosened rate; an unknown one is not added.
        if admitted.is_ok() || known {
            stripe.map.insert(key, st);
        }
        admitted
    }

    /// One connection of `key` ended.
    pub(crate) fn release(&self, key: NetKey, now: u64) {
        let mut stripe = self.stripe(&key);
        let map = &mut stripe.map;
        if let Some(st) = map.get_mut(&key) {
            st.live = st.live.saturating_sub(1);
            if st.live == 0 && st.tat <= now {
                map.remove(&key);
            }
        }
    }

    /// Networks held now (for the snapshot).
    pub(crate) fn len(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }
}

/// Drops networks without a live connection whose bucket is full again;
/// if half the stripe's cap is still held, every network without a live
/// connection (their buckets start full again). What it keeps is then
/// below half the cap, or networks with live connections only; the next
/// sweep waits for half the cap of new networks (see [`Stripe::sweep_at`]).
fn sweep(map: &mut HashMap<NetKey, NetState>, now: u64) {
    map.retain(|_, s| s.live > 0 || s.tat > now);
    if map.len() >= STRIPE_CAP / 2 {
        map.retain(|_, s| s.live > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::admission::{KindAdmission, Limits, Rate};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn prefixes_group_addresses() {
        let v4 = |s: &str, p| NetKey::new(0, IpAddr::V4(s.parse::<Ipv4Addr>().unwrap()), p, 64);
        let v6 = |s: &str, p| NetKey::new(0, IpAddr::V6(s.parse::<Ipv6Addr>().unwrap()), 32, p);
        assert_ne!(v4("192.0.2.1", 32), v4("192.0.2.2", 32));
        assert_eq!(v4("192.0.2.1", 24), v4("192.0.2.200", 24));
        assert_ne!(v4("192.0.2.1", 24), v4("192.0.3.1", 24));
        assert_eq!(v4("192.0.2.1", 0), v4("10.0.0.1", 0));
        // One /64 is one client by default, whatever its interface id.
        assert_eq!(v6("2001:db8:1:2::1", 64), v6("2001:db8:1:2:ffff::9", 64));
        assert_ne!(v6("2001:db8:1:2::1", 64), v6("2001:db8:1:3::1", 64));
        assert_eq!(v6("2001:db8:1:2::1", 48), v6("2001:db8:1:ff::1", 48));
        // IPv4-mapped IPv6 is the IPv4 client; IPv4 and IPv6 never mix.
        assert_eq!(v6("::ffff:192.0.2.1", 64), v4("192.0.2.1", 32));
        assert_ne!(v4("0.0.0.0", 32), v6("::", 64));
        // Listeners are counted apart.
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        assert_ne!(NetKey::new(0, ip, 32, 64), NetKey::new(1, ip, 32, 64));
        assert!(Limits::none().address_prefix(33, 64).is_err());
        assert!(Limits::none().address_prefix(32, 65).is_err());
        assert!(Limits::none().address_prefix(0, 0).is_ok());
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let mut st = NetState::default();
        let (count, per) = (3, 60 * SEC);
        let now = 1000 * SEC;
        for _ in 0..3 {
            assert_eq!(admit_one(&mut st, UNLIMITED, count, per, now), Ok(()));
        }
        assert_eq!(
            admit_one(&mut st, UNLIMITED, count, per, now),
            Err(RefuseReason::Rate)
        );
        // A refusal takes no token: still refused just before one refills.
        let almost = now + 20 * SEC - 1;
        assert_eq!(
            admit_one(&mut st, UNLIMITED, count, per, almost),
            Err(RefuseReason::Rate)
        );
        assert_eq!(
            admit_one(&mut st, UNLIMITED, count, per, now + 20 * SEC),
            Ok(())
        );
        assert_eq!(
            admit_one(&mut st, UNLIMITED, count, per, now + 20 * SEC),
            Err(RefuseReason::Rate)
        );
        // A whole period later the bucket is full again.
        let later = now + 200 * SEC;
        assert!(st.tat <= later);
        for _ in 0..3 {
            assert_eq!(admit_one(&mut st, UNLIMITED, count, per, later), Ok(()));
        }
        assert_eq!(st.live, 7);
    }

    #[test]
    fn a_loosened_rate_reaches_a_throttled_network_within_one_new_interval() {
        let mut st = NetState::default();
        let hour = 3600 * SEC;
        let now = 1000 * SEC;
        // 1 per hour: the second connection is refused for an hour.
        assert_eq!(admit_one(&mut st, UNLIMITED, 1, hour, now), Ok(()));
        assert_eq!(
            admit_one(&mut st, UNLIMITED, 1, hour, now + SEC),
            Err(RefuseReason::Rate)
        );
        // Loosened to 1,000 per second: the network starts from an empty
        // bucket of the new rate, not from an hour ahead.
        let (count, per) = (1000, SEC);
        let at = now + 2 * SEC;
        assert_eq!(
            admit_one(&mut st, UNLIMITED, count, per, at),
            Err(RefuseReason::Rate)
        );
        let interval = per / u64::from(count);
        assert_eq!(
            admit_one(&mut st, UNLIMITED, count, per, at + interval),
            Ok(())
        );
        // And one period later the whole new burst is there.
        let later = at + interval + per;
        for _ in 0..count {
            assert_eq!(admit_one(&mut st, UNLIMITED, count, per, later), Ok(()));
        }
        assert_eq!(
            admit_one(&mut st, UNLIMITED, count, per, later),
            Err(RefuseReason::Rate)
        );
    }

    #[test]
    fn the_table_keeps_a_loosened_rate_through_a_refusal() {
        let table = AddressTable::default();
        let key = NetKey::new(0, IpAddr::V4(Ipv4Addr::LOCALHOST), 32, 64);
        let rate = |count, secs| {
            KindAdmission::new(
                Limits::none()
                    .rate_per_address(Rate::new(count, Duration::from_secs(secs)).unwrap()),
            )
            .effective()
        };
        let (hourly, fast) = (rate(1, 3600), rate(1000, 1));
        table.acquire(key, &hourly, SEC).unwrap();
        table.release(key, SEC);
        // The first attempt under the new rate is refused (its bucket is
        // empty), but it brings the network into the new rate: a
        // millisecond later it is admitted.
        assert_eq!(table.acquire(key, &fast, 2 * SEC), Err(RefuseReason::Rate));
        assert_eq!(table.acquire(key, &fast, 2 * SEC + SEC / 1000), Ok(()));
        // A refused network the table did not know is not added.
        let unknown = NetKey::new(0, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 32, 64);
        let none = KindAdmission::new(Limits::none().max_per_address(0)).effective();
        assert_eq!(
            table.acquire(unknown, &none, 2 * SEC),
            Err(RefuseReason::AddressFull)
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn many_networks_with_live_connections_are_not_swept_for_every_new_one() {
        let table = AddressTable::default();
        let e = KindAdmission::new(Limits::none().max_per_address(1)).effective();
        let n = 3 * MAX_TRACKED_NETWORKS as u32;
        for i in 0..n {
            let key = NetKey::new(0, IpAddr::V4(Ipv4Addr::from(i)), 32, 64);
            table.acquire(key, &e, SEC).unwrap();
        }
        assert_eq!(table.len(), n as usize, "every live network is kept");
        let sweeps: usize = table.stripes.iter().map(|s| s.lock().unwrap().sweeps).sum();
        // Each sweep waits for half a stripe's cap of new networks.
        let bound = n as usize / (STRIPE_CAP / 2) + STRIPES;
        assert!(
            sweeps <= bound,
            "{sweeps} sweeps for {n} networks (bound {bound})"
        );
    }

    #[test]
    fn address_count_checked_before_the_rate() {
        let mut st = NetState::default();
        assert_eq!(admit_one(&mut st, 1, 10, 60 * SEC, SEC), Ok(()));
        assert_eq!(
            admit_one(&mut st, 1, 10, 60 * SEC, SEC),
            Err(RefuseReason::AddressFull)
        );
        // The refused attempt took no token: 9 are left.
        st.live = 0;
        for _ in 0..9 {
            assert_eq!(admit_one(&mut st, UNLIMITED, 10, 60 * SEC, SEC), Ok(()));
        }
        assert_eq!(
            admit_one(&mut st, UNLIMITED, 10, 60 * SEC, SEC),
            Err(RefuseReason::Rate)
        );
    }

    #[test]
    fn table_forgets_idle_networks_and_stays_bounded() {
        let table = AddressTable::default();
        let limits = Limits::none().max_per_address(1);
        let e = KindAdmission::new(limits).effective();
        let key = |i: u32| NetKey::new(0, IpAddr::V4(Ipv4Addr::from(i)), 32, 64);
        // Without a rate, a network is forgotten as its last connection ends.
        table.acquire(key(1), &e, SEC).unwrap();
        assert_eq!(
            table.acquire(key(1), &e, SEC),
            Err(RefuseReason::AddressFull)
        );
        assert_eq!(table.len(), 1);
        table.release(key(1), SEC);
        assert_eq!(table.len(), 0);
        // With a rate, a client rotating through addresses (each connection
        // closed at once, bucket not yet full) cannot grow the table past
        // its bound.
        let rated = KindAdmission::new(
            limits.rate_per_address(Rate::new(1, Duration::from_secs(3600)).unwrap()),
        )
        .effective();
        for i in 0..(MAX_TRACKED_NETWORKS as u32 * 3) {
            table.acquire(key(i), &rated, SEC).unwrap();
            table.release(key(i), SEC);
        }
        let held = table.len();
        assert!(held <= MAX_TRACKED_NETWORKS, "{held} networks held");
        // Networks with live connections are never forgotten.
        table.acquire(key(u32::MAX), &rated, SEC).unwrap();
        for i in 0..(MAX_TRACKED_NETWORKS as u32 * 2) {
            if table.acquire(key(i), &rated, 2 * SEC).is_ok() {
                table.release(key(i), 2 * SEC);
            }
        }
        assert_eq!(
            table.acquire(key(u32::MAX), &rated, 2 * SEC),
            Err(RefuseReason::AddressFull)
        );
    }
}
