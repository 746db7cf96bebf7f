//! The `FdBroker` actor: owns every inherited or bound descriptor and hands
//! each out once.

use std::path::PathBuf;

use actix::{Actor, Context, Handler, Message};
use lifecycle_handoff::{Inventory, ListenerSpec, PassedFile, PassedListener};
use slog::{debug, info, o, warn, Logger};

use crate::error::BrokerError;

/// Take the listener with this name. A second take is an error.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<PassedListener, BrokerError>")]
pub struct TakeListener {
    /// The listener's stable name (see [`ListenerSpec::name`]).
    pub name: String,
}

impl TakeListener {
    /// Asks for the listener `name`.
    pub fn new(name: impl Into<String>) -> Self {
        TakeListener { name: name.into() }
    }
}

/// Take the next descriptor opened for this path (first in, first out).
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<PassedFile, BrokerError>")]
pub struct TakeFile {
    /// The path the file was opened from.
    pub path: PathBuf,
}

impl TakeFile {
    /// Asks for the next descriptor of `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        TakeFile { path: path.into() }
    }
}

/// Mark the listener `name` as claimed: a listener actor (or the
/// application) will take it. [`CloseUnclaimed`] never closes a claimed
/// listener, so it is safe to send at any time after the claims.
/// [`ListenerBuilder::start`](crate::ListenerBuilder::start) claims its
/// listener before the actor starts. Idempotent; an unknown name fails
/// with [`BrokerError::UnknownListener`].
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), BrokerError>")]
pub struct ClaimListener {
    /// The listener's stable name (see [`ListenerSpec::name`]).
    pub name: String,
}

impl ClaimListener {
    /// Claims the listener `name`.
    pub fn new(name: impl Into<String>) -> Self {
        ClaimListener { name: name.into() }
    }
}

/// Report what the broker holds and what was taken.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "InventoryReport")]
pub struct GetInventory;

/// Close every descriptor nobody took or claimed (see [`ClaimListener`]),
/// logging a warning naming each. Replies with how many were closed. A
/// later [`TakeListener`] of a closed listener fails with
/// [`BrokerError::ClosedUnclaimed`].
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "usize")]
pub struct CloseUnclaimed;

/// One listener in an [`InventoryReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerState {
    /// What the listener is.
    pub spec: ListenerSpec,
    /// True once a [`TakeListener`] got it (or it was closed as unclaimed).
    pub taken: bool,
    /// True once it was closed by [`CloseUnclaimed`] (nobody took or claimed it).
    pub closed: bool,
    /// True once claimed (see [`ClaimListener`]) or taken.
    pub claimed: bool,
}

/// One file in an [`InventoryReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileState {
    /// The path the file was opened from.
    pub path: PathBuf,
    /// True once a [`TakeFile`] got it (or it was closed as unclaimed).
    pub taken: bool,
}

/// The reply to [`GetInventory`], in inventory order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct InventoryReport {
    /// Every listener the broker was given.
    pub listeners: Vec<ListenerState>,
    /// Every file the broker was given.
    pub files: Vec<FileState>,
}

impl InventoryReport {
    /// How many descriptors are still held.
    pub fn held(&self) -> usize {
        self.listeners.iter().filter(|l| !l.taken).count()
            + self.files.iter().filter(|f| !f.taken).count()
    }
}

#[derive(Debug)]
struct ListenerSlot {
    spec: ListenerSpec,
    fd: Option<std::os::fd::OwnedFd>,
    claimed: bool,
    closed: bool,
}

#[derive(Debug)]
struct FileSlot {
    path: PathBuf,
    fd: Option<std::os::fd::OwnedFd>,
}

/// Owns the [`Inventory`] a process was given (every listener and file as
/// an `OwnedFd`) and hands each descriptor out exactly once.
///
/// ```
/// use actix::Actor;
/// use actix_lifecycle::{FdBroker, TakeListener};
/// use lifecycle_handoff::{Inventory, ListenerSpec, PassedListener};
///
/// actix::System::new().block_on(async {
///     let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
///     let spec = ListenerSpec::tcp("web", tcp.local_addr().unwrap());
///     let inventory = Inventory {
///         listeners: vec![PassedListener { spec, fd: tcp.into() }],
///         files: vec![],
///     };
///     let log = slog::Logger::root(slog::Discard, slog::o!());
///     let broker = FdBroker::new(inventory, log).start();
///     let first = broker.send(TakeListener::new("web")).await.unwrap();
///     assert!(first.is_ok());
///     let second = broker.send(TakeListener::new("web")).await.unwrap();
///     assert!(second.is_err(), "a listener is handed out once");
/// });
/// ```
#[derive(Debug)]
pub struct FdBroker {
    listeners: Vec<ListenerSlot>,
    files: Vec<FileSlot>,
    log: Logger,
}

impl FdBroker {
    /// A broker owning `inventory`. Logs go to `log` (key `actor=broker`).
    pub fn new(inventory: Inventory, log: Logger) -> Self {
        let Inventory { listeners, files } = inventory;
        FdBroker {
            listeners: listeners
                .into_iter()
                .map(|l| ListenerSlot {
                    spec: l.spec,
                    fd: Some(l.fd),
                    claimed: false,
                    closed: false,
                })
                .collect(),
            files: files
                .into_iter()
                .map(|f| FileSlot {
                    path: f.path,
                    fd: Some(f.fd),
                })
                .collect(),
            log: log.new(o!("actor" => "broker")),
        }
    }

    fn unknown_listener(&self, name: String) -> BrokerError {
        let known: Vec<&str> = self.listeners.iter().map(|s| s.spec.name()).collect();
        warn!(self.log, "unknown listener asked for"; "listener" => &name);
        BrokerError::UnknownListener {
            name,
            known: if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            },
        }
    }

    fn report(&self) -> InventoryReport {
        InventoryReport {
            listeners: self
                .listeners
                .iter()
                .map(|s| ListenerState {
                    spec: s.spec.clone(),
                    taken: s.fd.is_none(),
                    closed: s.closed,
                    claimed: s.claimed,
                })
                .collect(),
            files: self
                .files
                .iter()
                .map(|s| FileState {
                    path: s.path.clone(),
                    taken: s.fd.is_none(),
                })
                .collect(),
        }
    }
}

impl Actor for FdBroker {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        info!(self.log, "fd broker started";
            "listeners" => self.listeners.len(), "files" => self.files.len());
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let held = self.report().held();
        if held > 0 {
            debug!(self.log, "fd broker stopped; closing descriptors nobody took"; "count" => held);
        }
    }
}

impl Handler<TakeListener> for FdBroker {
    type Result = Result<PassedListener, BrokerError>;

    fn handle(&mut self, msg: TakeListener, _ctx: &mut Self::Context) -> Self::Result {
        debug!(self.log, "take listener"; "listener" => &msg.name);
        let mut closed = false;
        let mut seen = false;
        for slot in self
            .listeners
            .iter_mut()
            .filter(|s| s.spec.name() == msg.name)
        {
            seen = true;
            slot.claimed = true;
            if let Some(fd) = slot.fd.take() {
                info!(self.log, "listener handed out";
                    "listener" => &msg.name, "address" => %slot.spec.address());
                return Ok(PassedListener {
                    spec: slot.spec.clone(),
                    fd,
                });
            }
            closed |= slot.closed;
        }
        if closed {
            warn!(self.log, "listener asked for after it was closed as unclaimed"; "listener" => &msg.name);
            Err(BrokerError::ClosedUnclaimed { name: msg.name })
        } else if seen {
            warn!(self.log, "listener asked for twice"; "listener" => &msg.name);
            Err(BrokerError::ListenerTaken { name: msg.name })
        } else {
            Err(self.unknown_listener(msg.name))
        }
    }
}

impl Handler<ClaimListener> for FdBroker {
    type Result = Result<(), BrokerError>;

    fn handle(&mut self, msg: ClaimListener, _ctx: &mut Self::Context) -> Self::Result {
        debug!(self.log, "claim listener"; "listener" => &msg.name);
        let mut seen = false;
        for slot in (self.listeners.iter_mut()).filter(|s| s.spec.name() == msg.name) {
            seen = true;
            slot.claimed = true;
        }
        if seen {
            Ok(())
        } else {
            Err(self.unknown_listener(msg.name))
        }
    }
}

impl Handler<TakeFile> for FdBroker {
    type Result = Result<PassedFile, BrokerError>;

    fn handle(&mut self, msg: TakeFile, _ctx: &mut Self::Context) -> Self::Result {
        debug!(self.log, "take file"; "path" => %msg.path.display());
        let mut count = 0;
        for slot in self.files.iter_mut().filter(|s| s.path == msg.path) {
            count += 1;
            if let Some(fd) = slot.fd.take() {
                info!(self.log, "file handed out"; "path" => %msg.path.display());
                return Ok(PassedFile {
                    path: slot.path.clone(),
                    fd,
                });
            }
        }
        if count == 0 {
            Err(BrokerError::UnknownFile { path: msg.path })
        } else {
            Err(BrokerError::FileExhausted {
                path: msg.path,
                count,
            })
        }
    }
}

impl Handler<GetInventory> for FdBroker {
    type Result = actix::MessageResult<GetInventory>;

    fn handle(&mut self, _msg: GetInventory, _ctx: &mut Self::Context) -> Self::Result {
        debug!(self.log, "inventory report");
        actix::MessageResult(self.report())
    }
}

impl Handler<CloseUnclaimed> for FdBroker {
    type Result = usize;

    fn handle(&mut self, _msg: CloseUnclaimed, _ctx: &mut Self::Context) -> usize {
        debug!(self.log, "close unclaimed");
        let mut closed = 0;
        for slot in self.listeners.iter_mut().filter(|s| !s.claimed) {
            if let Some(fd) = slot.fd.take() {
                slot.closed = true;
                warn!(self.log, "closing listener nobody took";
                    "listener" => slot.spec.name(), "address" => %slot.spec.address());
                drop(fd);
                closed += 1;
            }
        }
        for slot in &mut self.files {
            if let Some(fd) = slot.fd.take() {
                warn!(self.log, "closing file nobody took"; "path" => %slot.path.display());
                drop(fd);
                closed += 1;
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lifecycle_handoff::PassedFile;
    use std::os::fd::AsRawFd;

    fn discard() -> Logger {
        Logger::root(slog::Discard, o!())
    }

    fn inventory(dir: &std::path::Path) -> Inventory {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = std::os::unix::net::UnixListener::bind(dir.join("b.sock")).unwrap();
        let key = dir.join("key.pem");
        std::fs::write(&key, b"secret").unwrap();
        Inventory {
            listeners: vec![
                PassedListener {
                    spec: ListenerSpec::tcp("a", a.local_addr().unwrap()),
                    fd: a.into(),
                },
                PassedListener {
                    spec: ListenerSpec::unix("b", dir.join("b.sock")),
                    fd: b.into(),
                },
            ],
            files: vec![
                PassedFile {
                    path: key.clone(),
                    fd: std::fs::File::open(&key).unwrap().into(),
                },
                PassedFile {
                    path: key.clone(),
                    fd: std::fs::File::open(&key).unwrap().into(),
                },
            ],
        }
    }

    #[actix::test]
    async fn listeners_are_taken_once_and_unknown_names_fail() {
        let dir = tempfile::tempdir().unwrap();
        let broker = FdBroker::new(inventory(dir.path()), discard()).start();
        let a = broker.send(TakeListener::new("a")).await.unwrap().unwrap();
        assert_eq!(a.spec.name(), "a");
        assert!(a.fd.as_raw_fd() >= 0);
        let again = broker.send(TakeListener::new("a")).await.unwrap();
        assert!(
            matches!(again, Err(BrokerError::ListenerTaken { .. })),
            "{again:?}"
        );
        let unknown = broker.send(TakeListener::new("zzz")).await.unwrap();
        match unknown {
            Err(e @ BrokerError::UnknownListener { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("\"zzz\"") && msg.contains("a, b"), "{msg}");
            }
            other => panic!("expected UnknownListener, got {other:?}"),
        }
    }

    #[actix::test]
    async fn files_are_fifo_per_path_then_exhausted() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(dir.path());
        let want: Vec<i32> = inv.files.iter().map(|f| f.fd.as_raw_fd()).collect();
        let broker = FdBroker::new(inv, discard()).start();
        let key = dir.path().join("key.pem");
        let f1 = broker.send(TakeFile::new(&key)).await.unwrap().unwrap();
        let f2 = broker.send(TakeFile::new(&key)).await.unwrap().unwrap();
        assert_eq!(
            vec![f1.fd.as_raw_fd(), f2.fd.as_raw_fd()],
            want,
            "first in, first out"
        );
        let third = broker.send(TakeFile::new(&key)).await.unwrap();
        assert!(
            matches!(third, Err(BrokerError::FileExhausted { count: 2, .. })),
            "{third:?}"
        );
        let none = broker
            .send(TakeFile::new(dir.path().join("nope")))
            .await
            .unwrap();
        assert!(
            matches!(none, Err(BrokerError::UnknownFile { .. })),
            "{none:?}"
        );
    }

    #[actix::test]
    async fn inventory_reports_taken_and_close_unclaimed_closes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let broker = FdBroker::new(inventory(dir.path()), discard()).start();
        let _a = broker.send(TakeListener::new("a")).await.unwrap().unwrap();
        let report = broker.send(GetInventory).await.unwrap();
        assert_eq!(report.listeners.len(), 2);
        assert!(report.listeners[0].taken);
        assert!(!report.listeners[1].taken);
        assert_eq!(report.held(), 3);
        assert_eq!(broker.send(CloseUnclaimed).await.unwrap(), 3);
        assert_eq!(broker.send(GetInventory).await.unwrap().held(), 0);
        assert_eq!(
            broker.send(CloseUnclaimed).await.unwrap(),
            0,
            "closing twice closes nothing"
        );
        // The unix listener was closed: connecting to it fails.
        assert!(std::os::unix::net::UnixStream::connect(dir.path().join("b.sock")).is_err());
        // Asking for it now says it was closed, not taken by another actor.
        let late = broker.send(TakeListener::new("b")).await.unwrap();
        assert!(
            matches!(late, Err(BrokerError::ClosedUnclaimed { .. })),
            "{late:?}"
        );
    }

    #[actix::test]
    async fn a_claimed_listener_survives_close_unclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let broker = FdBroker::new(inventory(dir.path()), discard()).start();
        broker.send(ClaimListener::new("b")).await.unwrap().unwrap();
        let unknown = broker.send(ClaimListener::new("zzz")).await.unwrap();
        assert!(
            matches!(unknown, Err(BrokerError::UnknownListener { .. })),
            "{unknown:?}"
        );
        assert_eq!(broker.send(CloseUnclaimed).await.unwrap(), 3);
        let report = broker.send(GetInventory).await.unwrap();
        assert!(report.listeners[0].closed && !report.listeners[1].closed);
        assert!(report.listeners[1].claimed && !report.listeners[1].taken);
        let b = broker.send(TakeListener::new("b")).await.unwrap();
        assert!(b.is_ok(), "{b:?}");
    }
}
