//! Connection lifecycle for actix services.
//!
//! Actors that own the descriptors a process was given ([`FdBroker`]),
//! serve them ([`ListenerActor`]), track every live connection by protocol
//! and listener ([`ConnectionRegistry`], with prometheus metrics), and shut
//! down gracefully within bounds ([`ShutdownCoordinator`]): `Running →
//! LameDuck → Draining → Aborting → Stopped`, observed by handlers through a
//! [`ShutdownHandle`]. [`Lifecycle`] starts them together; [`Harness`]
//! runs the whole thing in a test, driven by messages.
//!
//! A complete line server, from the hand-off to exit status 0. In
//! production the process gets its sockets from a privileged parent or
//! systemd ([`Handoff::detect`] finds out which) and stops on SIGTERM; here
//! it binds a free port itself, and a client asks for the shutdown.
//!
//! ```
//! use std::time::Duration;
//!
//! use actix_lifecycle::{BeginShutdown, ConnHandler, Handoff, Lifecycle, ListenerSpec, Mode};
//! use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // First thing in main, while the process has one thread.
//!     let mut handoff = Handoff::detect("PINGD")?;
//!     handoff.prepare(&[ListenerSpec::tcp("ping", "127.0.0.1:0".parse()?)], &[])?;
//!     if handoff.mode() == Mode::Privileged {
//!         // Started as root: the port is bound, now stop being root.
//!         let user = lifecycle_handoff::TargetUser::lookup("nobody")?;
//!         lifecycle_handoff::drop_privileges_in_place(&user)?;
//!     }
//!
//!     let system = actix::System::new();
//!     let addr = system.block_on(async move {
//!         let lifecycle = Lifecycle::from_handoff(handoff)
//!             .drain_grace(Duration::from_secs(3))
//!             .start()?;
//!         lifecycle.serve("ping", "ping", ConnHandler::new(|conn| async move {
//!             let shutdown = conn.shutdown().clone();
//!             let (reader, mut writer) = tokio::io::split(conn);
//!             let mut lines = BufReader::new(reader).lines();
//!             loop {
//!                 // Wait for a line *or* the drain, whichever comes first:
//!                 // an idle client is told at once, not at its next line.
//!                 let line = tokio::select! {
//!                     line = lines.next_line() => line,
//!                     () = shutdown.draining() => {
//!                         let _ = writer.write_all(b"BYE shutting down\n").await;
//!                         break;
//!                     }
//!                 };
//!                 let reply: &[u8] = match line {
//!                     Ok(Some(l)) if l == "PING" => b"PONG\n",
//!                     Ok(Some(_)) => b"ERR say PING\n",
//!                     _ => break,
//!                 };
//!                 if writer.write_all(reply).await.is_err() {
//!                     break;
//!                 }
//!             }
//!             // The halves drop here: the socket closes and is unregistered.
//!         }));
//!         // Every listener serves; sockets nobody serves are closed.
//!         let ready = lifecycle.ready().await?;
//!         let addr = ready.listeners[0].address.to_string();
//!
//!         // A client, then a shutdown message in place of SIGTERM.
//!         let coordinator = lifecycle.coordinator().clone();
//!         let client_addr = addr.clone();
//!         actix::spawn(async move {
//!             let client = tokio::net::TcpStream::connect(client_addr).await.unwrap();
//!             let (reader, mut writer) = client.into_split();
//!             let mut lines = BufReader::new(reader).lines();
//!             writer.write_all(b"PING\n").await.unwrap();
//!             assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("PONG"));
//!             // Idle now: the drain reaches this connection at once.
//!             coordinator.do_send(BeginShutdown);
//!             assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("BYE shutting down"));
//!         });
//!         Ok::<_, Box<dyn std::error::Error>>(addr)
//!     })?;
//!     println!("served on {addr}");
//!     // The coordinator stops the System with status 0 once everything closed.
//!     assert_eq!(system.run_with_code()?, 0);
//!     Ok(())
//! }
//! ```
//!
//! Without a [`logger`](LifecycleBuilder::logger), errors (a listener that
//! cannot start, a fatal failure, a forced exit) still reach standard
//! error. [`Lifecycle::metrics_text`] renders every metric for a
//! `/metrics` endpoint. With the `actix-web` feature,
//! `Lifecycle::serve_actix_web` serves an actix-web `HttpServer` on a
//! listener of the inventory, its connections counted and its stop tied
//! to the phases (see `examples/actix_web_embed.rs`).
//!
//! # How connections are tracked
//!
//! * **Registration costs no message.** Each arbiter that serves
//!   connections has its own [`RegistryShard`]; a [`ListenerActor`] gets the
//!   shard of every arbiter it serves on. Registering is an allocation and an
//!   uncontended lock on that shard; dropping the [`ConnectionGuard`] (held by
//!   the connection's stream) unregisters, also while a panicking handler
//!   unwinds. [`ConnectionRegistry`] visits every shard for [`Shutdown`],
//!   [`Abort`], [`Done`], [`Snapshot`] and the metrics.
//! * **Abort is persistent and never touches a descriptor.** The registry
//!   knows no fd numbers. Aborting sets a flag on the connection that its
//!   [`Tracked`] stream (and so its [`Conn`]) checks on every read and write:
//!   from then on reads return end-of-file and writes fail, including ones
//!   already waiting (they are woken). A reused fd of a newer connection is
//!   never hit. A connection registered after [`Shutdown`] is aborted at once.
//! * **Counts never go negative.** Unregistering twice, or an unknown id, is
//!   a no-op (logged at debug level).
//!
//! # Telling systemd
//!
//! [`SystemdNotifier`] is the actor that speaks `sd_notify(3)` for a
//! [`Lifecycle`] under `Type=notify`: `READY=1` once every listener accepts
//! ([`WaitReady`] tells the service itself), a rate-limited `STATUS=` with
//! live connections and the phase, `STOPPING=1` when the shutdown begins, `WATCHDOG=1` pings
//! from its arbiter, and `MAINPID=` on request ([`SendMainPid`]). Its sends
//! never wait for room in the manager's queue, so a stuck manager cannot
//! stall the arbiter. Without `NOTIFY_SOCKET` it sends nothing and fails
//! nothing. The variables are read once into a [`NotifyEnv`] (or injected).
//!
//! Underneath is one synchronous sender, [`NotifySender`] (lifecycle-handoff's
//! [`Notifier`](lifecycle_handoff::Notifier), re-exported): the same one the
//! privileged parent and a successor hand-off use, for a process without an
//! actor system. Each send waits at most its send timeout (250 ms by
//! default) and fails with a [`NotifyError`] that names the socket.
//!
//! ```
//! use actix_lifecycle::{NotifySender, NotifyState};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("notify");
//! # let systemd = std::os::unix::net::UnixDatagram::bind(&path)?;
//! // In a service: `NotifySender::from_env()?`, None without NOTIFY_SOCKET.
//! let sender = NotifySender::new(&path)?;
//! sender.notify(&[NotifyState::Ready, NotifyState::Status("serving")])?;
//! # let mut buf = [0u8; 64];
//! # let n = systemd.recv(&mut buf)?;
//! # assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving\n");
//! # Ok(())
//! # }
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

// The README's example is compiled and run with the doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod broker;
mod buffer;
mod error;
mod harness;
mod lifecycle;
mod listener;
mod metrics;
mod notify;
mod phase;
mod ready;
mod registry;
mod shutdown;
mod stderr_log;
#[cfg(feature = "actix-web")]
mod web;

pub use broker::{
    ClaimListener, CloseUnclaimed, FdBroker, FileState, GetInventory, InventoryReport,
    ListenerState, TakeFile, TakeListener,
};
pub use buffer::{poll_read_pooled, read_pooled, PooledBuf, READ_BUFFER};
pub use error::{BrokerError, LifecycleError, LimitsError, ListenerError, ProxyConfigError};
pub use harness::{Harness, HarnessBuilder, HarnessInfo, Start};
pub use lifecycle::{Lifecycle, LifecycleBuilder};
pub use listener::{
    Accepted, Conn, ConnHandler, ConnParts, GetListenerInfo, ListenerActor, ListenerBuilder,
    ListenerInfo, OnFailure, PeerAddr, ProxyProtocol, ProxyVersion, StopAccepting, Stream,
    TrustedNetwork, ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_MIN, DEFAULT_PROXY_DEADLINE,
    DEFAULT_PROXY_MAX_HEADER,
};
pub use metrics::DEFAULT_PREFIX;
pub use notify::{
    GetNotifierState, HandedOver, NotifierBuilder, NotifierState, NotifyEnv, NotifyError,
    NotifySender, SendMainPid, SystemdNotifier, WaitReady,
};
pub use phase::{Phase, PhaseController, ShutdownHandle};
pub use ready::{Ready, ServedListener};
pub use registry::{
    Abort, Admission, ConnKind, ConnectionGuard, ConnectionInfo, ConnectionRegistry, Done,
    KindCount, Limits, Rate, RefuseReason, RefusedCounts, Register, RegistryBuilder,
    RegistryHandle, RegistryShard, RegistrySnapshot, SetLimits, Shutdown, Snapshot, Tracked,
    Unregister, DURATION_BUCKETS, MAX_PREFIX_V4, MAX_PREFIX_V6, MAX_TRACKED_NETWORKS, STRIPES,
};
pub use shutdown::{
    BeginShutdown, EndLameDuck, Fatal, GetPhase, ShutdownBuilder, ShutdownCoordinator,
    SignalReceived, StopOutcome, WaitStopped, DEFAULT_ABORT_GRACE, DEFAULT_DRAIN_GRACE,
    DEFAULT_LAME_DUCK,
};

#[doc(no_inline)]
pub use lifecycle_handoff::NotifyState;
#[doc(no_inline)]
pub use lifecycle_handoff::{
    Handoff, HeldSignals, Inventory, ListenAddress, ListenerSpec, Mode, Network, PassedListener,
};
