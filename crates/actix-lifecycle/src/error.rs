//! Typed errors of the actors. Every message names the culprit and the fix.

use std::io;
use std::path::PathBuf;

/// Why the [`FdBroker`](crate::FdBroker) could not hand out a descriptor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// No listener with this name was ever in the inventory.
    #[error(
        "no listener named {name:?} in the inventory (known: {known}); \
         declare it in the configuration so it is bound or passed to this process"
    )]
    UnknownListener {
        /// The name asked for.
        name: String,
        /// The names the inventory holds, comma-separated.
        known: String,
    },
    /// The listener was handed out before; a second take is refused
    /// instead of silently duplicating the socket.
    #[error(
        "listener {name:?} was already taken by another ListenerActor; \
         start one ListenerActor per listener name"
    )]
    ListenerTaken {
        /// The name asked for.
        name: String,
    },
    /// The listener was in the inventory, but nobody had taken or claimed
    /// it when [`CloseUnclaimed`](crate::CloseUnclaimed) was sent, so the
    /// broker closed it.
    #[error(
        "listener {name:?} was closed as unclaimed before it was asked for; \
         start its ListenerActor (or claim it with ClaimListener) before \
         Lifecycle::ready or CloseUnclaimed"
    )]
    ClosedUnclaimed {
        /// The name asked for.
        name: String,
    },
    /// No file with this path was ever in the inventory.
    #[error(
        "no file {path:?} in the inventory; declare it so the privileged \
         start opens it and passes it to this process"
    )]
    UnknownFile {
        /// The path asked for.
        path: PathBuf,
    },
    /// Every descriptor opened for this path was already taken.
    #[error(
        "every descriptor for file {path:?} was already taken ({count} passed); \
         declare the file once more per extra reader"
    )]
    FileExhausted {
        /// The path asked for.
        path: PathBuf,
        /// How many descriptors were passed for the path.
        count: usize,
    },
    /// The broker actor is gone (its System stopped).
    #[error("the FdBroker actor is not running; start it before the listeners")]
    Gone,
}

/// Why a [`ListenerActor`](crate::ListenerActor) could not serve its socket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// The broker refused the socket.
    #[error("listener {name:?}: {source}")]
    Broker {
        /// The listener name.
        name: String,
        /// What the broker said.
        #[source]
        source: BrokerError,
    },
    /// The descriptor could not be turned into a non-blocking tokio listener.
    #[error(
        "listener {name:?}: cannot adopt the socket into tokio: {source}; \
         the descriptor must be a listening stream socket of the declared network"
    )]
    Adopt {
        /// The listener name.
        name: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The socket is not what the inventory declares (not a listening
    /// stream socket of the declared network, or bound elsewhere), as
    /// [`validate_listener`](lifecycle_handoff::validate_listener) found.
    #[error(
        "listener {name:?}: the socket is not the one declared: {source}; the listener \
         stays down until the inventory passes the socket it declares"
    )]
    Invalid {
        /// The listener name.
        name: String,
        /// What the check found (names the descriptor and the fix);
        /// boxed, as the hand-off's error is large.
        #[source]
        source: Box<lifecycle_handoff::Error>,
    },
    /// The accept loop failed with an error it cannot back off from.
    #[error(
        "listener {name:?}: accepting failed: {source}; the listening socket is \
         unusable, restart the service (its successor gets a fresh socket)"
    )]
    Accept {
        /// The listener name.
        name: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The actor stopped before it served its socket (its log says why).
    #[error(
        "listener {name:?} stopped before it served its socket; start it inside \
         the running System and keep the System running until Lifecycle::ready"
    )]
    Stopped {
        /// The listener name.
        name: String,
    },
}

/// Why the lifecycle (or a test harness) could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// The metrics could not be registered on the injected prometheus registry.
    #[error(
        "cannot register metrics with prefix {prefix:?}: {source}; \
         use another prefix or a separate prometheus::Registry per instance"
    )]
    Metrics {
        /// The metric name prefix in use.
        prefix: String,
        /// What prometheus said.
        #[source]
        source: prometheus::Error,
    },
    /// A listener of a test harness could not be bound.
    #[error("cannot bind listener {name:?} on {address}: {source}; pick a free address")]
    Bind {
        /// The listener name.
        name: String,
        /// The address it was to be bound on.
        address: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The harness was started twice.
    #[error("this harness was already started; start a new Harness actor per instance")]
    AlreadyStarted,
    /// The harness was asked for something before it was started.
    #[error("this harness is not started yet; send Start first")]
    NotStarted,
    /// Started outside a running actix `System` (actors need an arbiter).
    #[error(
        "the lifecycle must be started inside a running actix System: call it from \
         System::new().block_on(..), #[actix::main] or #[actix::test]"
    )]
    NoSystem,
    /// Two listeners of the inventory have the same name: the broker hands
    /// listeners out by name, so the second could never be served.
    #[error(
        "two listeners in the inventory are named {name:?}; give every listener \
         a unique name (the inventory of Handoff::prepare always has unique names)"
    )]
    DuplicateListener {
        /// The repeated name.
        name: String,
    },
    /// A listener served by the lifecycle could not start (see
    /// [`Lifecycle::ready`](crate::Lifecycle::ready)).
    #[error("{source}")]
    ListenerStart {
        /// The listener name.
        name: String,
        /// Why it could not start (names the listener and the fix).
        #[source]
        source: ListenerError,
    },
    /// A [`Mode::Privileged`](lifecycle_handoff::Mode) inventory (bound by
    /// root for an unprivileged service) would be served by a process that
    /// is still root.
    #[error(
        "refusing to serve a privileged-mode inventory as root: drop privileges first \
         (lifecycle_handoff::drop_privileges_in_place with TargetUser::lookup(\"<user>\"), \
         before any thread starts), or let the root parent start an unprivileged child \
         (lifecycle_handoff::ChildSpawner); LifecycleBuilder::allow_root(true) serves as \
         root anyway (not recommended)"
    )]
    ServingAsRoot,
    /// The broker stopped before the lifecycle was ready (the System is
    /// stopping).
    #[error("the FdBroker stopped before the lifecycle was ready; keep the actix System running until Lifecycle::ready resolves")]
    BrokerGone,
    /// A listener of a test harness stopped instead of accepting (its log
    /// says why).
    #[error("listener {name:?} of the harness did not start accepting; see its log for the cause")]
    ListenerFailed {
        /// The listener name.
        name: String,
    },
}

/// Why admission [`Limits`](crate::Limits) or a [`Rate`](crate::Rate)
/// cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// Not `COUNT/UNIT`.
    #[error(
        "rate {text:?} is not COUNT/UNIT: write it such as \"60/min\" or \"5/10s\" \
         (units: ms, s, min, h, d)"
    )]
    RateSyntax {
        /// The text given.
        text: String,
    },
    /// The count is not a whole number from 1 up.
    #[error(
        "rate {text:?}: the count before `/` must be a whole number of connections \
         from 1 to 4294967295, such as \"60/min\""
    )]
    RateCount {
        /// The text given.
        text: String,
    },
    /// The period is shorter than 1 ms or longer than 7 days.
    #[error("rate {text:?}: the period after `/` must be from 1 ms to 7 days, such as \"60/min\"")]
    RatePeriod {
        /// The text given.
        text: String,
    },
    /// A prefix longer than the address family allows.
    #[error(
        "address prefix /{prefix} is too long for IPv{family}: use 0 to {max} \
         (IPv4 /32 is one host; IPv6 /64 is the smallest network a site is given, \
         a longer prefix would let one client rotate through 2^64 addresses)"
    )]
    Prefix {
        /// 4 or 6.
        family: u8,
        /// The prefix given.
        prefix: u8,
        /// The longest allowed.
        max: u8,
    },
}

/// A PROXY protocol setting that cannot be used
/// ([`ProxyProtocol`](crate::ProxyProtocol),
/// [`TrustedNetwork`](crate::TrustedNetwork),
/// [`ProxyVersion`](crate::ProxyVersion)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyConfigError {
    /// Not a PROXY protocol version.
    #[error("PROXY protocol version {text:?} is unknown: write \"v1\", \"v2\" or \"any\"")]
    Version {
        /// The text given.
        text: String,
    },
    /// Not an address with an optional prefix length.
    #[error(
        "trusted proxy network {text:?} is not ADDRESS[/PREFIX]: write it such as \
         \"127.0.0.1/32\", \"10.0.0.0/8\" or \"fd00::/8\" (IP addresses, not host names)"
    )]
    Network {
        /// The text given.
        text: String,
    },
    /// A prefix longer than the address family allows.
    #[error("trusted proxy network {text:?}: the prefix length must be 0 to {max} for this address family")]
    Prefix {
        /// The text given.
        text: String,
        /// The longest allowed (32 or 128).
        max: u8,
    },
}
