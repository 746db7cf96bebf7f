//! Why a connection was refused, and the refusals counted per listener.

use std::fmt;

/// How many [`RefuseReason`]s there are.
pub(crate) const REASONS: usize = 10;

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
