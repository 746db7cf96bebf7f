//! Messages of the [`ConnectionRegistry`](crate::ConnectionRegistry) and
//! the snapshot it replies with.

use std::sync::Arc;
use std::time::Duration;

use actix::Message;

use super::admission::{Limits, RefuseReason, RefusedCounts};
use super::shard::ConnectionGuard;
use super::ConnKind;

/// Register a connection on the registry's own shard and reply with its
/// guard. This costs a round trip: on an accept path use
/// [`RegistryShard::register`](crate::RegistryShard::register) instead.
#[derive(Debug, Clone, Message)]
#[rtype(result = "ConnectionGuard")]
pub struct Register {
    /// What the connection is (protocol, listener).
    pub kind: ConnKind,
}

/// Unregister a connection by id. Unregistering twice, or an unknown id,
/// is harmless (logged at debug level). Replies whether it was live.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "bool")]
pub struct Unregister {
    /// The connection id ([`ConnectionGuard::id`]).
    pub id: u64,
}

/// Abort every live connection now, and every connection registered from
/// now on. Replies with how many were aborted by this message.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "usize")]
pub struct Shutdown;

/// Abort one live connection by id. Replies whether it was live.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "bool")]
pub struct Abort {
    /// The connection id ([`ConnectionGuard::id`]).
    pub id: u64,
}

/// Change admission limits at run time: the registry-wide default, or one
/// listener's own. Takes effect for the next registration; connections
/// already live stay.
///
/// ```
/// use actix_lifecycle::{Limits, SetLimits};
///
/// // Every listener without its own limits: at most 50 per client network.
/// let all = SetLimits::default_limits(Limits::none().max_per_address(50));
/// // The "mx" SMTP listener: at most 500 connections.
/// let mx = SetLimits::listener("smtp", "mx", Some(Limits::none().max_connections(500)));
/// # drop((all, mx));
/// ```
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
#[non_exhaustive]
pub struct SetLimits {
    /// `(protocol, listener)`; `None` for the registry-wide default.
    pub listener: Option<(String, String)>,
    /// The new limits; for a listener, `None` follows the default again
    /// (for the default, `None` changes nothing).
    pub limits: Option<Limits>,
}

impl SetLimits {
    /// New registry-wide default limits.
    pub fn default_limits(limits: Limits) -> Self {
        SetLimits {
            listener: None,
            limits: Some(limits),
        }
    }

    /// New limits for one listener (`None`: follow the default again).
    pub fn listener(
        protocol: impl Into<String>,
        listener: impl Into<String>,
        limits: Option<Limits>,
    ) -> Self {
        SetLimits {
            listener: Some((protocol.into(), listener.into())),
            limits,
        }
    }
}

/// Resolves when no connection remains: at once if none is live. Any number
/// of senders may wait.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Done;

/// Counts per kind and every live entry with its age.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "RegistrySnapshot")]
pub struct Snapshot;

/// Counts for one (protocol, listener) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KindCount {
    /// The protocol label.
    pub protocol: Arc<str>,
    /// The listener label.
    pub listener: Arc<str>,
    /// Connections live now.
    pub live: u64,
    /// Connections registered so far.
    pub accepted: u64,
    /// Connections aborted so far.
    pub aborted: u64,
    /// Connections refused so far, by reason.
    pub refused: RefusedCounts,
    /// The admission limits in force.
    pub limits: Limits,
}

/// One live connection in a [`RegistrySnapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The connection id.
    pub id: u64,
    /// The protocol label.
    pub protocol: Arc<str>,
    /// The listener label.
    pub listener: Arc<str>,
    /// Time since registration.
    pub age: Duration,
    /// True once the connection was aborted.
    pub aborted: bool,
}

/// The reply to [`Snapshot`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegistrySnapshot {
    /// Live connections in all shards.
    pub live: u64,
    /// True once the registry was shut down.
    pub shut_down: bool,
    /// Counts per kind, for every kind seen so far.
    pub kinds: Vec<KindCount>,
    /// Every live connection, oldest first.
    pub entries: Vec<ConnectionInfo>,
    /// The registry-wide default limits.
    pub default_limits: Limits,
    /// Client networks the per-address table holds now (see
    /// [`MAX_TRACKED_NETWORKS`](crate::MAX_TRACKED_NETWORKS)).
    pub tracked_networks: usize,
}

impl RegistrySnapshot {
    /// The counts of one (protocol, listener) pair, if it was seen.
    pub fn kind(&self, protocol: &str, listener: &str) -> Option<&KindCount> {
        self.kinds
            .iter()
            .find(|k| &*k.protocol == protocol && &*k.listener == listener)
    }

    /// Connections registered so far, all kinds.
    pub fn accepted(&self) -> u64 {
        self.kinds.iter().map(|k| k.accepted).sum()
    }

    /// Connections aborted so far, all kinds.
    pub fn aborted(&self) -> u64 {
        self.kinds.iter().map(|k| k.aborted).sum()
    }

    /// Connections refused so far for `reason`, all kinds.
    pub fn refused(&self, reason: RefuseReason) -> u64 {
        self.kinds.iter().map(|k| k.refused.get(reason)).sum()
    }
}
