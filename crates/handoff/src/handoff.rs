//! How this process gets its descriptors: the [`Handoff`] that holds
//! them, and the `listen` / `open_privileged` calls that behave the same in
//! every mode. The builder and the rule that picks a mode are in
//! `builder.rs`; how passed listeners are claimed by specs in `claim.rs`.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::bind::{bind_listener, open_file};
use crate::env::VarNames;
use crate::error::{Error, Result};
use crate::inventory::{Inventory, PassedFile, PassedListener};
use crate::lineage::Lineage;
use crate::mode::Mode;
use crate::ready::ReadyChannel;
use crate::spec::{FileSpec, ListenerSpec};

mod builder;
mod claim;

pub use builder::{HandoffBuilder, ModeChoice};

/// The descriptors of this process's lifecycle and the mode they come from.
///
/// The same program makes the same calls in every mode: [`listen`](Self::listen)
/// for each listener and [`open_privileged`](Self::open_privileged) for each
/// secret file (or [`prepare`](Self::prepare) for all of them, then
/// [`into_inventory`](Self::into_inventory) for an `FdBroker`).
///
/// ```
/// use std::io::Read;
/// use lifecycle_handoff::{Handoff, ListenerSpec, Mode};
///
/// let dir = tempfile::tempdir().unwrap();
/// let key = dir.path().join("key.pem");
/// std::fs::write(&key, "secret").unwrap();
///
/// let mut handoff = Handoff::builder().mode(Mode::Privileged).detect().unwrap();
/// let spec = ListenerSpec::tcp("smtp", "127.0.0.1:0".parse().unwrap());
/// let listener = std::net::TcpListener::from(handoff.listen(&spec).unwrap());
/// let mut text = String::new();
/// handoff.open_privileged(&key).unwrap().read_to_string(&mut text).unwrap();
/// assert_eq!(text, "secret");
///
/// // Privileged mode kept a copy of each for the child, with the bound port.
/// let kept = handoff.into_inventory();
/// assert_eq!(kept.listeners[0].spec.address().to_string(),
///            listener.local_addr().unwrap().to_string());
/// assert_eq!(kept.files[0].path, key);
/// ```
#[derive(Debug)]
pub struct Handoff {
    choice: ModeChoice,
    names: VarNames,
    inventory: Inventory,
    ready: Option<ReadyChannel>,
    lineage: Option<Lineage>,
}

impl Handoff {
    /// A builder to set the prefix, force a mode or accept mox's format.
    pub fn builder() -> HandoffBuilder {
        HandoffBuilder::default()
    }

    /// Detects the mode with variable prefix `prefix` (see
    /// [`HandoffBuilder::choose`] for the rule) and takes any passed
    /// descriptors. Call once at start-up, before other threads exist.
    pub fn detect(prefix: &str) -> Result<Handoff> {
        Self::builder().prefix(prefix).detect()
    }

    /// Uses `mode` instead of detecting one.
    pub fn with_mode(prefix: &str, mode: Mode) -> Result<Handoff> {
        Self::builder().prefix(prefix).mode(mode).detect()
    }

    /// A hand-off in `mode` holding `inventory` (for tests and harnesses
    /// that already own their descriptors).
    pub fn from_inventory(mode: Mode, inventory: Inventory) -> Handoff {
        Handoff {
            choice: ModeChoice {
                mode,
                reason: format!("{mode} mode with a given inventory"),
                mox_format: false,
            },
            names: VarNames::default(),
            inventory,
            ready: None,
            lineage: None,
        }
    }

    /// The readiness channel to the parent, taken once: `Some` only in
    /// inherited mode when the parent passed one (an upgrade-capable parent
    /// or a predecessor always does). Call
    /// [`ReadyChannel::notify_ready`] once every listener accepts; the
    /// parent waits for it before it drains the previous generation (and,
    /// under systemd, before it reports `READY=1`).
    pub fn take_ready_channel(&mut self) -> Option<ReadyChannel> {
        self.ready.take()
    }

    /// This process's generation and the parent's upgrade counters, when
    /// the parent wrote them (inherited mode), for the start-up log and the
    /// metrics (`lifecycle_upgrades_total{result}`, the generation gauge).
    pub fn lineage(&self) -> Option<Lineage> {
        self.lineage
    }

    /// The mode in use.
    pub fn mode(&self) -> Mode {
        self.choice.mode
    }

    /// Why that mode was chosen, for the start-up log line.
    pub fn reason(&self) -> &str {
        &self.choice.reason
    }

    /// The mode and the reason.
    pub fn choice(&self) -> &ModeChoice {
        &self.choice
    }

    /// The hand-off variable names in use.
    pub fn var_names(&self) -> &VarNames {
        &self.names
    }

    /// What this hand-off holds: in privileged mode the copies kept for the
    /// child; in inherited and systemd modes what was passed and not yet
    /// taken.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// A listening socket for `spec` (non-blocking, close-on-exec), the
    /// same call in every mode:
    ///
    /// - privileged: binds, keeps a duplicate for the child (with the bound
    ///   address when port 0 was asked for);
    /// - immediate: binds;
    /// - inherited, systemd: takes the passed listener of that name whose
    ///   address `spec` accepts; failing that, one bound to an address
    ///   `spec` accepts, unnamed ones first (systemd sockets without
    ///   `FileDescriptorName=`, mox entries). What is taken carries `spec`'s
    ///   name from then on. Nothing matching is an error that says what to
    ///   change: in systemd mode [`Error::NoActivatedSocket`] or
    ///   [`Error::ActivatedSocketMismatch`], in inherited mode
    ///   [`Error::NoSuchListener`] or [`Error::SpecMismatch`].
    pub fn listen(&mut self, spec: &ListenerSpec) -> Result<OwnedFd> {
        match self.mode() {
            Mode::Privileged => {
                self.check_unique(spec)?;
                let (fd, bound) = bind_listener(spec)?;
                let kept = fd.try_clone().map_err(|source| Error::Dup {
                    what: spec.to_string(),
                    source,
                })?;
                self.inventory.listeners.push(PassedListener {
                    spec: spec.clone().with_address(bound),
                    fd: kept,
                });
                Ok(fd)
            }
            Mode::Immediate => Ok(bind_listener(spec)?.0),
            Mode::Inherited | Mode::Systemd => Ok(self.take_listener(spec)?.fd),
        }
    }

    /// A name may be bound once: two listeners on one address stay two only
    /// when their names differ.
    fn check_unique(&self, spec: &ListenerSpec) -> Result<()> {
        let listeners = &self.inventory.listeners;
        match listeners.iter().position(|l| l.spec.name() == spec.name()) {
            Some(first) => Err(Error::DuplicateName {
                var: "listen()".to_owned(),
                name: spec.name().to_owned(),
                first,
                second: listeners.len(),
            }),
            None => Ok(()),
        }
    }

    /// An open, read-only, close-on-exec file for `path`, the same call in
    /// every mode:
    ///
    /// - privileged: opens, keeps a duplicate for the child;
    /// - immediate, systemd: opens;
    /// - inherited: takes the first passed descriptor for `path` (a path
    ///   opened twice by the parent is taken twice, in order).
    pub fn open_privileged(&mut self, path: impl AsRef<Path>) -> Result<File> {
        let path = path.as_ref();
        match self.mode() {
            Mode::Privileged => {
                let file = open_file(path)?;
                let kept = file
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|source| Error::Dup {
                        what: format!("{path:?}"),
                        source,
                    })?;
                self.inventory.files.push(PassedFile {
                    path: path.to_owned(),
                    fd: kept,
                });
                Ok(file)
            }
            Mode::Immediate | Mode::Systemd => open_file(path),
            Mode::Inherited => Ok(File::from(self.take_file(path)?.fd)),
        }
    }

    fn take_file(&mut self, path: &Path) -> Result<PassedFile> {
        let files = &mut self.inventory.files;
        match files.iter().position(|f| f.path == path) {
            Some(index) => Ok(files.remove(index)),
            None => Err(Error::NoSuchFile {
                path: path.to_owned(),
                mode: self.choice.mode,
                available: list(files.iter().map(|f| format!("{:?}", f.path))),
            }),
        }
    }

    /// Makes the inventory hold one listener per spec and one file per
    /// file spec, for an `FdBroker` to own after
    /// [`into_inventory`](Self::into_inventory):
    ///
    /// - privileged, immediate: binds and opens each into the inventory;
    /// - systemd: checks each listener was passed, opens the files;
    /// - inherited: checks each listener and file was passed.
    ///
    /// Passed listeners are matched as by [`listen`](Self::listen), all by
    /// name first, then the rest by address, and take the names of the
    /// specs that claim them. They are reordered to follow `listeners`;
    /// passed ones nobody asked for stay at the end (an `FdBroker` closes
    /// them with a warning once the listeners run). On an error nothing is
    /// taken.
    ///
    /// ```
    /// use lifecycle_handoff::{Handoff, Inventory, ListenAddress, ListenerSpec, Mode, PassedListener};
    ///
    /// // An unnamed socket from systemd (no FileDescriptorName=) is named by its address.
    /// let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// let bound = ListenAddress::Tcp(tcp.local_addr().unwrap());
    /// let passed = PassedListener { spec: ListenerSpec::new(bound.to_string(), bound.clone()), fd: tcp.into() };
    /// let inventory = Inventory { listeners: vec![passed], files: vec![] };
    /// let mut handoff = Handoff::from_inventory(Mode::Systemd, inventory);
    ///
    /// handoff.prepare(&[ListenerSpec::new("smtp", bound)], &[]).unwrap();
    /// assert_eq!(handoff.inventory().listeners[0].spec.name(), "smtp");
    ///
    /// // A listener without a socket: the error names it and the fix.
    /// let err = handoff.prepare(&[ListenerSpec::tcp("imap", "127.0.0.1:143".parse().unwrap())], &[]);
    /// assert!(err.unwrap_err().to_string().contains("FileDescriptorName=imap"));
    /// ```
    pub fn prepare(&mut self, listeners: &[ListenerSpec], files: &[FileSpec]) -> Result<()> {
        match self.mode() {
            Mode::Privileged | Mode::Immediate => {
                for spec in listeners {
                    self.check_unique(spec)?;
                    let (fd, bound) = bind_listener(spec)?;
                    self.inventory.listeners.push(PassedListener {
                        spec: spec.clone().with_address(bound),
                        fd,
                    });
                }
                for file in files {
                    let fd = OwnedFd::from(open_file(file.path())?);
                    self.inventory.files.push(PassedFile {
                        path: file.path().to_owned(),
                        fd,
                    });
                }
            }
            Mode::Inherited | Mode::Systemd => {
                let taken = self.claim_all(listeners)?;
                let rest = std::mem::take(&mut self.inventory.listeners);
                // A leftover may share a claimed socket's name (systemd names
                // every socket of a unit alike: `ListenStream=0.0.0.0:25` and
                // `[::]:25` are both "smtp"). It is named by its address, as
                // an unnamed one is, so names stay unique and the broker
                // closes it as unclaimed, with a log line.
                let rest: Vec<PassedListener> = rest
                    .into_iter()
                    .map(|mut l| {
                        if taken.iter().any(|t| t.spec.name() == l.spec.name()) {
                            let address = l.spec.address().clone();
                            l.spec = ListenerSpec::new(address.to_string(), address)
                                .with_backlog(l.spec.backlog());
                        }
                        l
                    })
                    .collect();
                self.inventory.listeners = taken;
                self.inventory.listeners.extend(rest);
                if self.mode() == Mode::Systemd {
                    for file in files {
                        let fd = OwnedFd::from(open_file(file.path())?);
                        self.inventory.files.push(PassedFile {
                            path: file.path().to_owned(),
                            fd,
                        });
                    }
                } else {
                    for file in files {
                        let needed = files.iter().filter(|f| f.path() == file.path()).count();
                        let have = self
                            .inventory
                            .files
                            .iter()
                            .filter(|f| f.path == file.path())
                            .count();
                        if have < needed {
                            return Err(Error::NoSuchFile {
                                path: file.path().to_owned(),
                                mode: self.mode(),
                                available: list(
                                    self.inventory.files.iter().map(|f| format!("{:?}", f.path)),
                                ),
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Closes every descriptor still held (passed and not taken) and
    /// returns a description of each, for a warning.
    pub fn close_unclaimed(&mut self) -> Vec<String> {
        let inventory = std::mem::take(&mut self.inventory);
        let mut closed: Vec<String> = inventory
            .listeners
            .into_iter()
            .map(|l| format!("listener {}", l.spec))
            .collect();
        closed.extend(
            inventory
                .files
                .into_iter()
                .map(|f| format!("file {:?}", f.path)),
        );
        closed
    }

    /// Everything this hand-off holds, for an `FdBroker` to own (or, in
    /// privileged mode, for the child). Each descriptor moves; none is
    /// closed twice or leaked.
    pub fn into_inventory(self) -> Inventory {
        self.inventory
    }
}

fn list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests;
