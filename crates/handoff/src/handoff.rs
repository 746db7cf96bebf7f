//! How this process gets its descriptors: the four modes, the rule that
//! picks one, and the `listen` / `open_privileged` calls that behave the same
//! in every mode.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::bind::{bind_listener, open_file};
use crate::env::{Manifest, VarNames, FIRST_PASSED_FD};
use crate::environment::{thread_count, Environment, ProcessEnvironment};
use crate::error::{Error, Result};
use crate::inventory::{Inventory, PassedFile, PassedListener};
use crate::lineage::{Lineage, UpgradeVars};
use crate::mode::{choose_mode, Mode, ModeChoice};
use crate::ready::ReadyChannel;
use crate::spec::{FileSpec, ListenerSpec};
use crate::systemd::SystemdManifest;

/// Configures and runs mode detection (a consuming builder).
///
/// ```
/// use lifecycle_handoff::{Handoff, Mode};
///
/// let handoff = Handoff::builder().prefix("GATEWAY").mode(Mode::Immediate).detect().unwrap();
/// assert_eq!(handoff.mode(), Mode::Immediate);
/// assert_eq!(handoff.reason(), "immediate mode chosen explicitly");
/// ```
#[derive(Debug, Clone)]
pub struct HandoffBuilder {
    prefix: String,
    mode: Option<Mode>,
    mox: bool,
}

impl Default for HandoffBuilder {
    fn default() -> Self {
        HandoffBuilder {
            prefix: crate::env::DEFAULT_PREFIX.to_owned(),
            mode: None,
            mox: false,
        }
    }
}

impl HandoffBuilder {
    /// The hand-off variable prefix (default `LIFECYCLE`): variables are
    /// `<PREFIX>_SOCKETS`, `_FILES`, `_FDS`, `_PARENT_PID`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Uses `mode` instead of detecting one (default: detect).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Also accepts mox's `MOX_SOCKETS`/`MOX_FILES` hand-off (default
    /// off), for programs migrating from mox's privileged parent.
    pub fn mox_compat(mut self, accept: bool) -> Self {
        self.mox = accept;
        self
    }

    /// Applies the detection rule to `env` for a process with effective
    /// user id `euid`, without touching any descriptor. The rule, first
    /// match wins:
    ///
    /// 1. a mode set with [`mode`](Self::mode) is used (privileged refuses
    ///    when hand-off variables are present, like mox);
    /// 2. any `<PREFIX>_*` hand-off variable is set → [`Mode::Inherited`];
    /// 3. with [`mox_compat`](Self::mox_compat), `MOX_SOCKETS` is set →
    ///    [`Mode::Inherited`] in mox format;
    /// 4. `LISTEN_FDS` or `LISTEN_PID` is set → [`Mode::Systemd`];
    /// 5. `euid` is 0 → [`Mode::Privileged`];
    /// 6. otherwise → [`Mode::Immediate`].
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use lifecycle_handoff::{Handoff, Mode};
    ///
    /// let mut env = BTreeMap::new();
    /// assert_eq!(Handoff::builder().choose(&env, 0).unwrap().mode, Mode::Privileged);
    /// assert_eq!(Handoff::builder().choose(&env, 1000).unwrap().mode, Mode::Immediate);
    /// env.insert("LISTEN_FDS".into(), "1".into());
    /// assert_eq!(Handoff::builder().choose(&env, 0).unwrap().mode, Mode::Systemd);
    /// ```
    pub fn choose(&self, env: &impl Environment, euid: u32) -> Result<ModeChoice> {
        let names = VarNames::new(&self.prefix)?;
        choose_mode(&names, env, euid, self.mode, self.mox)
    }

    /// Detects the mode from this process's environment and effective user
    /// and, in inherited and systemd modes, takes and validates the passed
    /// descriptors (removing the variables).
    ///
    /// Call it once, at start-up, before other threads exist: it removes
    /// environment variables, and it adopts descriptors 3.. as owned. In
    /// inherited and systemd modes (the ones that remove variables) it
    /// checks that the process has one thread (`Threads:` in
    /// `/proc/self/status`; not checked where `/proc` is missing) and
    /// otherwise refuses with [`Error::ThreadsRunning`], leaving the
    /// environment as it was: call it first thing in `main`, before a
    /// logger thread, an async runtime or a thread pool starts. Privileged
    /// and immediate modes touch no variable and run in any process.
    pub fn detect(self) -> Result<Handoff> {
        let mut env = ProcessEnvironment;
        let euid = nix::unistd::geteuid().as_raw();
        let choice = self.choose(&env, euid)?;
        let names = VarNames::new(&self.prefix)?;
        if matches!(choice.mode, Mode::Inherited | Mode::Systemd) {
            // Taking these hand-offs removes their variables.
            if let Some(threads) = thread_count().filter(|&threads| threads > 1) {
                return Err(Error::ThreadsRunning {
                    threads,
                    mode: choice.mode,
                });
            }
        }
        let mut ready = None;
        let mut lineage = None;
        let inventory = match choice.mode {
            Mode::Privileged | Mode::Immediate => Inventory::default(),
            Mode::Inherited if choice.mox_format => {
                let manifest = Manifest::decode_mox(&mut env)?;
                // SAFETY: the variables were opted into (mox format) and are
                // now removed, so no later call adopts these numbers again; at
                // start-up nothing else in the process owns descriptors 3..,
                // which the parent placed there for us.
                unsafe { crate::validate::adopt_manifest(&manifest, &names, FIRST_PASSED_FD) }?
            }
            Mode::Inherited => {
                // Read (and remove) the upgrade variables first, so they are
                // gone even when the hand-off is refused.
                let upgrade = UpgradeVars::take(&mut env, &names);
                let ppid = nix::unistd::getppid().as_raw();
                let manifest =
                    Manifest::decode(&mut env, &names, u32::try_from(ppid).unwrap_or(0))?;
                let ready_fd = upgrade.ready_fd(&names, manifest.fd_count())?;
                lineage = upgrade.lineage(&names)?;
                // SAFETY: the variables were addressed to this process (parent
                // pid checked) and are now removed, so no later call adopts
                // these numbers again; at start-up nothing else in the process
                // owns descriptors 3.., which the parent placed there for us.
                let inventory =
                    unsafe { crate::validate::adopt_manifest(&manifest, &names, FIRST_PASSED_FD) }?;
                if let Some(fd) = ready_fd {
                    // SAFETY: as above; the ready descriptor is the one right
                    // after the manifest's (checked by `ready_fd`), so it is
                    // not among those just adopted.
                    ready = Some(unsafe { ReadyChannel::adopt(fd, names.ready_fd()) }?);
                }
                inventory
            }
            Mode::Systemd => {
                let pid = std::process::id();
                let manifest = SystemdManifest::decode(&mut env, pid)?;
                // SAFETY: LISTEN_PID names this process and the variables are
                // now removed, so no later call adopts these numbers again;
                // systemd placed them at 3.. for us and nothing else in the
                // process owns them at start-up.
                unsafe { manifest.adopt(crate::systemd::SD_LISTEN_FDS_START) }?
            }
        };
        Ok(Handoff {
            choice,
            names,
            inventory,
            ready,
            lineage,
        })
    }
}

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

    fn take_listener(&mut self, spec: &ListenerSpec) -> Result<PassedListener> {
        match self
            .find_by_name(spec)
            .or_else(|| self.find_by_address(spec))
        {
            Some(index) => Ok(claimed(self.inventory.listeners.remove(index), spec)),
            None => Err(self.missing_listener(spec)),
        }
    }

    /// The passed listener named like `spec` whose address `spec` accepts.
    fn find_by_name(&self, spec: &ListenerSpec) -> Option<usize> {
        self.inventory
            .listeners
            .iter()
            .position(|l| l.spec.name() == spec.name() && spec.address().accepts(l.spec.address()))
    }

    /// A passed listener whose address `spec` accepts, unnamed ones first
    /// (see [`is_unnamed`]).
    fn find_by_address(&self, spec: &ListenerSpec) -> Option<usize> {
        let listeners = &self.inventory.listeners;
        let at_address = |l: &&PassedListener| spec.address().accepts(l.spec.address());
        listeners
            .iter()
            .position(|l| at_address(&l) && is_unnamed(l))
            .or_else(|| listeners.iter().position(|l| at_address(&l)))
    }

    /// Why nothing passed matches `spec`, with the fix for this mode.
    fn missing_listener(&self, spec: &ListenerSpec) -> Error {
        let listeners = &self.inventory.listeners;
        let available = || list(listeners.iter().map(|l| l.spec.to_string()));
        let same_name = listeners.iter().find(|l| l.spec.name() == spec.name());
        match (self.mode(), same_name) {
            (Mode::Systemd, Some(other)) => Error::ActivatedSocketMismatch {
                name: spec.name().to_owned(),
                passed: other.spec.address().to_string(),
                requested: spec.address().to_string(),
            },
            (Mode::Systemd, None) => Error::NoActivatedSocket {
                name: spec.name().to_owned(),
                address: spec.address().to_string(),
                available: available(),
            },
            (_, Some(other)) => Error::SpecMismatch {
                name: spec.name().to_owned(),
                passed: other.spec.to_string(),
                requested: spec.to_string(),
            },
            (mode, None) => Error::NoSuchListener {
                spec: spec.to_string(),
                mode,
                available: available(),
            },
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

    /// Takes one passed listener per spec, in the order of `specs`, each
    /// renamed to its spec's name: first every match by name, then, for the
    /// specs still without one, a match by address (so an unnamed socket
    /// never goes to a spec whose named socket is also passed). On an error
    /// nothing is taken.
    fn claim_all(&mut self, specs: &[ListenerSpec]) -> Result<Vec<PassedListener>> {
        let mut slots: Vec<Option<PassedListener>> = specs.iter().map(|_| None).collect();
        for (slot, spec) in slots.iter_mut().zip(specs) {
            if let Some(index) = self.find_by_name(spec) {
                *slot = Some(self.inventory.listeners.remove(index));
            }
        }
        let mut failed = None;
        for (slot, spec) in slots.iter_mut().zip(specs) {
            if slot.is_some() {
                continue;
            }
            match self.find_by_address(spec) {
                Some(index) => *slot = Some(self.inventory.listeners.remove(index)),
                None => {
                    failed = Some(self.missing_listener(spec));
                    break;
                }
            }
        }
        if let Some(err) = failed {
            // Put back what was taken, as it was, so nothing is lost.
            let taken: Vec<PassedListener> = slots.into_iter().flatten().collect();
            self.inventory.listeners.splice(0..0, taken);
            return Err(err);
        }
        Ok(slots
            .into_iter()
            .zip(specs)
            .filter_map(|(slot, spec)| slot.map(|l| claimed(l, spec)))
            .collect())
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

/// True for a passed listener named by its address: an unnamed systemd
/// socket (`LISTEN_FDNAMES` absent, or the name empty or `unknown`) or a mox
/// entry. Every address's text holds a `:` and systemd refuses a `:` in
/// `FileDescriptorName=`, so a name given by a socket unit is never of this
/// form.
fn is_unnamed(listener: &PassedListener) -> bool {
    listener.spec.name() == listener.spec.address().to_string()
}

/// `listener`, claimed by `spec`: it takes the spec's name (the name the
/// program, and an `FdBroker`, look it up by) and keeps the address it is
/// bound to.
fn claimed(listener: PassedListener, spec: &ListenerSpec) -> PassedListener {
    PassedListener {
        spec: ListenerSpec::new(spec.name(), listener.spec.address().clone())
            .with_backlog(listener.spec.backlog()),
        fd: listener.fd,
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
