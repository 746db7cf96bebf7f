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
//! past that bound plus the number of live connections.
//!
//! A per-address limit or rate set at run time counts the connections
//! registered from then on; the per-listener count is always exact.
//!
//! The address admitted is the one given to `admit`: the peer of the
//! accepted socket today. A listener that learns the real client address
//! later (the PROXY protocol, read after the accept) admits after reading
//! it, with that address.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::error::LimitsError;

/// Stripes of the per-address table.
pub const STRIPES: usize = 64;
/// Networks the per-address table keeps without a live connection, at
/// most (all listeners together). Networks with live connections are kept
/// regardless.
pub const MAX_TRACKED_NETWORKS: usize = 65_536;
/// How many [`RefuseReason`]s there are.
pub(crate) const REASONS: usize = 10;
const STRIPE_CAP: usize = MAX_TRACKED_NETWORKS / STRIPES;

/// Why a connection was refused. Its [`as_str`](Self::as_str) is the
/// `reason` label of `<prefix>_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefuseReason {
    /// The listener has `max_connections` live connections.
    ListenerFull,
    /// The client's network has `max_per_address` live connections on
    /// this listener.
    AddressFull,
    /// The client's network opened connections faster than
    /// `rate_per_address` allows.
    Rate,
    /// The process is out of file descriptors (`EMFILE`/`ENFILE`): the
    /// connection was accepted on the reserve descriptor only to be told.
    Descriptors,
    /// A listener speaking the PROXY protocol was reached by an address
    /// outside its trusted proxies
    /// ([`ProxyProtocol::trust`](crate::ProxyProtocol::trust)).
    ProxyUntrusted,
    /// The PROXY header was not a PROXY header, or did not parse.
    ProxyMalformed,
    /// The connection ended in the middle of the PROXY header.
    ProxyPartial,
    /// The PROXY header was longer than the protocol (v1) or the listener
    /// (v2) allows.
    ProxyOversized,
    /// A PROXY header of the version the listener does not accept (v1 on a
    /// v2 listener, or the reverse).
    ProxyVersion,
    /// No complete PROXY header arrived within the listener's deadline.
    ProxyTimeout,
}

impl RefuseReason {
    /// Every reason, in label order.
    pub const ALL: [RefuseReason; REASONS] = [
        RefuseReason::ListenerFull,
        RefuseReason::AddressFull,
        RefuseReason::Rate,
        RefuseReason::Descriptors,
        RefuseReason::ProxyUntrusted,
        RefuseReason::ProxyMalformed,
        RefuseReason::ProxyPartial,
        RefuseReason::ProxyOversized,
        RefuseReason::ProxyVersion,
        RefuseReason::ProxyTimeout,
    ];

    /// The metric label: `listener_full`, `address_full`, `rate`,
    /// `descriptors`, or for the PROXY protocol `proxy_untrusted`,
    /// `proxy_malformed`, `proxy_partial`, `proxy_oversized`,
    /// `proxy_version`, `proxy_timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::ListenerFull => "listener_full",
            RefuseReason::AddressFull => "address_full",
            RefuseReason::Rate => "rate",
            RefuseReason::Descriptors => "descriptors",
            RefuseReason::ProxyUntrusted => "proxy_untrusted",
            RefuseReason::ProxyMalformed => "proxy_malformed",
            RefuseReason::ProxyPartial => "proxy_partial",
            RefuseReason::ProxyOversized => "proxy_oversized",
            RefuseReason::ProxyVersion => "proxy_version",
            RefuseReason::ProxyTimeout => "proxy_timeout",
        }
    }

    /// True for the PROXY protocol's reasons: such a connection is closed
    /// without a reply (the other end is a proxy or a stranger, not a
    /// client of the protocol).
    pub fn is_proxy(self) -> bool {
        self.index() >= RefuseReason::ProxyUntrusted.index()
    }

    pub(crate) fn index(self) -> usize {
        match self {
            RefuseReason::ListenerFull => 0,
            RefuseReason::AddressFull => 1,
            RefuseReason::Rate => 2,
            RefuseReason::Descriptors => 3,
            RefuseReason::ProxyUntrusted => 4,
            RefuseReason::ProxyMalformed => 5,
            RefuseReason::ProxyPartial => 6,
            RefuseReason::ProxyOversized => 7,
            RefuseReason::ProxyVersion => 8,
            RefuseReason::ProxyTimeout => 9,
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Refusals of one listener so far, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefusedCounts {
    /// Refused with [`RefuseReason::ListenerFull`].
    pub listener_full: u64,
    /// Refused with [`RefuseReason::AddressFull`].
    pub address_full: u64,
    /// Refused with [`RefuseReason::Rate`].
    pub rate: u64,
    /// Refused with [`RefuseReason::Descriptors`].
    pub descriptors: u64,
    /// Refused by the PROXY protocol, by reason (indexed like
    /// [`RefuseReason::ALL`]; read them with [`get`](Self::get)).
    proxy: [u64; REASONS - 4],
}

impl RefusedCounts {
    pub(crate) fn from_array(a: [u64; REASONS]) -> Self {
        let mut proxy = [0; REASONS - 4];
        proxy.copy_from_slice(&a[4..]);
        RefusedCounts {
            listener_full: a[0],
            address_full: a[1],
            rate: a[2],
            descriptors: a[3],
            proxy,
        }
    }

    /// The count for one reason.
    pub fn get(&self, reason: RefuseReason) -> u64 {
        match reason {
            RefuseReason::ListenerFull => self.listener_full,
            RefuseReason::AddressFull => self.address_full,
            RefuseReason::Rate => self.rate,
            RefuseReason::Descriptors => self.descriptors,
            proxy => self.proxy[proxy.index() - 4],
        }
    }

    /// All refusals.
    pub fn total(&self) -> u64 {
        self.listener_full
            + self.address_full
            + self.rate
            + self.descriptors
            + self.proxy.iter().sum::<u64>()
    }
}

/// A connection rate: at most `count` connections at once, then one more
/// every `per / count` (a token bucket of `count` tokens refilled over
/// `per`).
///
/// ```
/// use std::time::Duration;
/// use actix_lifecycle::Rate;
///
/// let rate: Rate = "60/min".parse()?;
/// assert_eq!((rate.count(), rate.per()), (60, Duration::from_secs(60)));
/// assert_eq!("5/10s".parse::<Rate>()?.per(), Duration::from_secs(10));
/// let err = "60 per minute".parse::<Rate>().unwrap_err();
/// assert!(err.to_string().contains("\"60/min\""));
/// # Ok::<(), actix_lifecycle::LimitsError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    count: u32,
    per: Duration,
}

/// Longest period of a [`Rate`].
const MAX_RATE_PERIOD: Duration = Duration::from_secs(7 * 24 * 3600);

impl Rate {
    /// `count` connections per `per`: `count` at least 1, `per` from 1 ms
    /// to 7 days.
    pub fn new(count: u32, per: Duration) -> Result<Rate, LimitsError> {
        if count == 0 {
            return Err(LimitsError::RateCount {
                text: format!("{count}/{per:?}"),
            });
        }
        if per < Duration::from_millis(1) || per > MAX_RATE_PERIOD {
            return Err(LimitsError::RatePeriod {
                text: format!("{count}/{per:?}"),
            });
        }
        Ok(Rate { count, per })
    }

    /// Connections allowed at once (the bucket's size).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period over which `count` connections are allowed.
    pub fn per(&self) -> Duration {
        self.per
    }

    fn per_nanos(&self) -> u64 {
        u64::try_from(self.per.as_nanos()).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.per.as_secs();
        if self.per.subsec_nanos() != 0 {
            write!(f, "{}/{}ms", self.count, self.per.as_millis())
        } else if secs % 86_400 == 0 {
            write!(f, "{}/{}", self.count, unit(secs / 86_400, "d"))
        } else if secs % 3600 == 0 {
            write!(f, "{}/{}", self.count, unit(secs / 3600, "h"))
        } else if secs % 60 == 0 {
            write!(f, "{}/{}", self.count, unit(secs / 60, "min"))
        } else {
            write!(f, "{}/{}", self.count, unit(secs, "s"))
        }
    }
}

fn unit(n: u64, name: &str) -> String {
    if n == 1 {
        name.to_owned()
    } else {
        format!("{n}{name}")
    }
}

impl FromStr for Rate {
    type Err = LimitsError;

    /// `COUNT/UNIT` or `COUNT/NUNIT`: units `ms`, `s`, `min` (or `m`), `h`,
    /// `d` (long forms such as `second`, `minute`, `hour`, `day` too).
    fn from_str(text: &str) -> Result<Rate, LimitsError> {
        let syntax = || LimitsError::RateSyntax {
            text: text.to_owned(),
        };
        let (count, period) = text.split_once('/').ok_or_else(syntax)?;
        let count: u32 = count.trim().parse().map_err(|_| LimitsError::RateCount {
            text: text.to_owned(),
        })?;
        let period = period.trim();
        let digits = period.chars().take_while(char::is_ascii_digit).count();
        let (n, name) = period.split_at(digits);
        let n: u64 = if n.is_empty() {
            1
        } else {
            n.parse().map_err(|_| syntax())?
        };
        let unit = match name.trim() {
            "ms" | "msec" | "millisecond" | "milliseconds" => Duration::from_millis(1),
            "s" | "sec" | "second" | "seconds" => Duration::from_secs(1),
            "m" | "min" | "minute" | "minutes" => Duration::from_secs(60),
            "h" | "hour" | "hours" => Duration::from_secs(3600),
            "d" | "day" | "days" => Duration::from_secs(86_400),
            _ => return Err(syntax()),
        };
        let per = u32::try_from(n)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or_else(|| LimitsError::RatePeriod {
                text: text.to_owned(),
            })?;
        Rate::new(count, per).map_err(|e| match e {
            LimitsError::RateCount { .. } => LimitsError::RateCount {
                text: text.to_owned(),
            },
            _ => LimitsError::RatePeriod {
                text: text.to_owned(),
            },
        })
    }
}

/// Admission limits of a listener (or the registry-wide default). Every
/// limit is off by default.
///
/// ```
/// use actix_lifecycle::{Limits, Rate};
///
/// let limits = Limits::none()
///     .max_connections(2000)
///     .max_per_address(20)
///     .address_prefix(32, 64)?
///     .rate_per_address("60/min".parse::<Rate>()?);
/// assert_eq!(limits.get_max_connections(), Some(2000));
/// assert_eq!(limits.get_max_per_address(), Some(20));
/// assert!(Limits::none().address_prefix(32, 96).is_err());
/// # Ok::<(), actix_lifecycle::LimitsError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    max_connections: Option<u32>,
    max_per_address: Option<u32>,
    prefix_v4: u8,
    prefix_v6: u8,
    rate: Option<Rate>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::none()
    }
}

/// Longest IPv4 prefix: one host.
pub const MAX_PREFIX_V4: u8 = 32;
/// Longest IPv6 prefix: /64, the smallest network a site is given; a
/// longer one would let one client rotate through 2^64 addresses.
pub const MAX_PREFIX_V6: u8 = 64;

impl Limits {
    /// No limit; client networks are IPv4 /32 and IPv6 /64.
    pub const fn none() -> Limits {
        Limits {
            max_connections: None,
            max_per_address: None,
            prefix_v4: MAX_PREFIX_V4,
            prefix_v6: MAX_PREFIX_V6,
            rate: None,
        }
    }

    /// At most `n` live connections on the listener (0 refuses every
    /// connection). Default: no limit.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// At most `n` live connections per client network on the listener.
    /// Default: no limit.
    pub fn max_per_address(mut self, n: u32) -> Self {
        self.max_per_address = Some(n);
        self
    }

    /// The prefix lengths that group client addresses into networks:
    /// IPv4 0 to 32 (default 32), IPv6 0 to 64 (default 64). IPv4-mapped
    /// IPv6 addresses count as IPv4.
    pub fn address_prefix(mut self, v4: u8, v6: u8) -> Result<Self, LimitsError> {
        if v4 > MAX_PREFIX_V4 {
            return Err(LimitsError::Prefix {
                family: 4,
                prefix: v4,
                max: MAX_PREFIX_V4,
            });
        }
        if v6 > MAX_PREFIX_V6 {
            return Err(LimitsError::Prefix {
                family: 6,
                prefix: v6,
                max: MAX_PREFIX_V6,
            });
        }
        self.prefix_v4 = v4;
        self.prefix_v6 = v6;
        Ok(self)
    }

    /// At most `rate` new connections per client network on the listener.
    /// Default: no limit.
    pub fn rate_per_address(mut self, rate: Rate) -> Self {
        self.rate = Some(rate);
        self
    }

    /// The per-listener limit, if any.
    pub fn get_max_connections(&self) -> Option<u32> {
        self.max_connections
    }

    /// The per-network limit, if any.
    pub fn get_max_per_address(&self) -> Option<u32> {
        self.max_per_address
    }

    /// The (IPv4, IPv6) prefix lengths of a client network.
    pub fn get_address_prefix(&self) -> (u8, u8) {
        (self.prefix_v4, self.prefix_v6)
    }

    /// The per-network rate, if any.
    pub fn get_rate_per_address(&self) -> Option<Rate> {
        self.rate
    }
}

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
            own: Mutex::new(None),
        };
        a.apply(&limits);
        a
    }

    fn apply(&self, l: &Limits) {
        let r = Ordering::Relaxed;
        self.max_connections
            .store(l.max_connections.unwrap_or(UNLIMITED), r);
        self.max_per_address
            .store(l.max_per_address.unwrap_or(UNLIMITED), r);
        self.prefixes
            .store(u16::from(l.prefix_v4) << 8 | u16::from(l.prefix_v6), r);
        self.rate_per.store(l.rate.map_or(0, |r| r.per_nanos()), r);
        self.rate_count.store(l.rate.map_or(0, |r| r.count), r);
    }

    /// Sets this kind's own limits (`None`: follow `default`).
    pub(crate) fn set_own(&self, own: Option<Limits>, default: &Limits) {
        let mut slot = self.own.lock().unwrap_or_else(PoisonError::into_inner);
        *slot = own;
        self.apply(own.as_ref().unwrap_or(default));
    }

    /// Applies a new registry default unless this kind has its own.
    pub(crate) fn default_changed(&self, default: &Limits) {
        let slot = self.own.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            self.apply(default);
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

    /// The limits in force, as plain numbers (relaxed loads: a limit
    /// changed at this instant applies from the next registration).
    pub(crate) fn effective(&self) -> Effective {
        let r = Ordering::Relaxed;
        let prefixes = self.prefixes.load(r);
        Effective {
            max_connections: self.max_connections.load(r),
            max_per_address: self.max_per_address.load(r),
            prefix_v4: (prefixes >> 8) as u8,
            prefix_v6: (prefixes & 0xff) as u8,
            rate_count: self.rate_count.load(r),
            rate_per: self.rate_per.load(r),
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
    stripes: Box<[Mutex<HashMap<NetKey, NetState>>]>,
}

impl Default for AddressTable {
    fn default() -> Self {
        AddressTable {
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl AddressTable {
    fn stripe(&self, key: &NetKey) -> std::sync::MutexGuard<'_, HashMap<NetKey, NetState>> {
        self.stripes[key.stripe()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more connection of `key`, or says why not.
    pub(crate) fn acquire(&self, key: NetKey, e: &Effective, now: u64) -> Result<(), RefuseReason> {
        let mut map = self.stripe(&key);
        if map.len() >= STRIPE_CAP && !map.contains_key(&key) {
            sweep(&mut map, now);
        }
        let mut st = map.get(&key).copied().unwrap_or_default();
        admit_one(&mut st, e.max_per_address, e.rate_count, e.rate_per, now)?;
        map.insert(key, st);
        Ok(())
    }

    /// One connection of `key` ended.
    pub(crate) fn release(&self, key: NetKey, now: u64) {
        let mut map = self.stripe(&key);
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
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// Drops networks without a live connection whose bucket is full again;
/// if the stripe is still at its cap, every network without a live
/// connection (their buckets start full again).
fn sweep(map: &mut HashMap<NetKey, NetState>, now: u64) {
    map.retain(|_, s| s.live > 0 || s.tat > now);
    if map.len() >= STRIPE_CAP {
        map.retain(|_, s| s.live > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn rates_parse_and_print() {
        let ok = [
            ("60/min", 60, 60),
            ("60/m", 60, 60),
            ("10/s", 10, 1),
            ("5/10s", 5, 10),
            ("100/h", 100, 3600),
            ("1000/day", 1000, 86_400),
            (" 3 / 2min ", 3, 120),
        ];
        for (text, count, secs) in ok {
            let r: Rate = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((r.count(), r.per()), (count, Duration::from_secs(secs)));
            assert_eq!(r.to_string().parse::<Rate>().ok(), Some(r), "{r}");
        }
        assert_eq!(
            "60/min".parse::<Rate>().map(|r| r.to_string()).ok(),
            Some("60/min".into())
        );
        let bad = [
            ("60", "COUNT/UNIT"),
            ("60/fortnight", "COUNT/UNIT"),
            ("x/min", "count"),
            ("0/min", "count"),
            ("1/0s", "period"),
            ("1/8d", "period"),
        ];
        for (text, needle) in bad {
            let e = text.parse::<Rate>().expect_err(text).to_string();
            assert!(e.contains(needle) && e.contains(text), "{text}: {e}");
        }
    }

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
