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
//! A complete echo server. In production the [`Inventory`] comes from
//! `lifecycle_handoff` (a privileged parent, systemd, or a direct bind) and
//! the service stops on SIGTERM; here it binds itself and a client sends
//! [`BeginShutdown`] so the example ends.
//!
//! ```
//! use std::time::Duration;
//!
//! use actix_lifecycle::{BeginShutdown, ConnHandler, Lifecycle};
//! use lifecycle_handoff::{Inventory, ListenerSpec, PassedListener};
//! use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
//!
//! fn main() -> std::io::Result<()> {
//!     let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
//!     let addr = tcp.local_addr()?;
//!     let inventory = Inventory {
//!         listeners: vec![PassedListener { spec: ListenerSpec::tcp("echo", addr), fd: tcp.into() }],
//!         files: vec![],
//!     };
//!     let log = slog::Logger::root(slog::Discard, slog::o!());
//!
//!     let system = actix::System::new();
//!     system.block_on(async move {
//!         let lifecycle = Lifecycle::builder(inventory)
//!             .logger(log)
//!             .drain_grace(Duration::from_secs(3))
//!             .start()
//!             .expect("metrics register on a fresh registry");
//!
//!         lifecycle.serve("echo", "echo", ConnHandler::new(|conn| async move {
//!             let shutdown = conn.shutdown().clone();
//!             // The Conn is the stream; it stays registered until dropped.
//!             let (reader, mut writer) = tokio::io::split(conn);
//!             let mut lines = BufReader::new(reader).lines();
//!             while let Ok(Some(line)) = lines.next_line().await {
//!                 if shutdown.is_draining() {
//!                     let _ = writer.write_all(b"bye: shutting down\n").await;
//!                     break;
//!                 }
//!                 if writer.write_all(format!("{line}\n").as_bytes()).await.is_err() {
//!                     break;
//!                 }
//!             }
//!             // The halves drop here: the socket closes and the connection is unregistered.
//!         }));
//!
//!         // A client, then a shutdown message in place of SIGTERM.
//!         let coordinator = lifecycle.coordinator().clone();
//!         actix::spawn(async move {
//!             let client = tokio::net::TcpStream::connect(addr).await.unwrap();
//!             let (reader, mut writer) = client.into_split();
//!             writer.write_all(b"hello\n").await.unwrap();
//!             let mut lines = BufReader::new(reader).lines();
//!             assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("hello"));
//!             drop((lines, writer));
//!             coordinator.do_send(BeginShutdown);
//!         });
//!     });
//!     // The coordinator stops the System with status 0 once everything closed.
//!     let code = system.run_with_code()?;
//!     assert_eq!(code, 0);
//!     Ok(())
//! }
//! ```

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

mod broker;
mod buffer;
mod error;
mod harness;
mod lifecycle;
mod listener;
mod metrics;
mod notify;
mod phase;
mod registry;
mod shutdown;

pub use broker::{
    CloseUnclaimed, FdBroker, FileState, GetInventory, InventoryReport, ListenerState, TakeFile,
    TakeListener,
};
pub use buffer::{poll_read_pooled, read_pooled, PooledBuf, READ_BUFFER};
pub use error::{BrokerError, LifecycleError, LimitsError, ListenerError};
pub use harness::{Harness, HarnessBuilder, HarnessInfo, Start};
pub use lifecycle::{Lifecycle, LifecycleBuilder};
pub use listener::{
    Accepted, Conn, ConnHandler, ConnParts, GetListenerInfo, ListenerActor, ListenerBuilder,
    ListenerInfo, PeerAddr, StopAccepting, Stream, ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_MIN,
};
pub use metrics::{DEFAULT_PREFIX, DURATION_BUCKETS};
pub use notify::{
    GetNotifierState, HandedOver, NotifierBuilder, NotifierState, NotifyEnv, NotifyError,
    NotifySender, SendMainPid, SystemdNotifier, WaitReady,
};
pub use phase::{Phase, PhaseController, ShutdownHandle};
pub use registry::{
    Abort, ConnKind, ConnectionGuard, ConnectionInfo, ConnectionRegistry, Done, KindCount, Limits,
    Rate, RefuseReason, RefusedCounts, Register, RegistryBuilder, RegistryHandle, RegistryShard,
    RegistrySnapshot, SetLimits, Shutdown, Snapshot, Tracked, Unregister, MAX_PREFIX_V4,
    MAX_PREFIX_V6, MAX_TRACKED_NETWORKS, STRIPES,
};
pub use shutdown::{
    BeginShutdown, EndLameDuck, GetPhase, ShutdownBuilder, ShutdownCoordinator, SignalReceived,
    StopOutcome, WaitStopped, DEFAULT_ABORT_GRACE, DEFAULT_DRAIN_GRACE, DEFAULT_LAME_DUCK,
};

#[doc(no_inline)]
pub use lifecycle_handoff::Inventory;
#[doc(no_inline)]
pub use lifecycle_handoff::NotifyState;
