//! The hand-off protocol: what the privileged parent writes into the child's
//! environment, and how the child reads it back.
//!
//! ```text
//! LIFECYCLE_SOCKETS=smtp=tcp:0.0.0.0:25,imap=tcp:[::]:143,ctl=unix:/run/gw/ctl%2Cv1.sock
//! LIFECYCLE_FILES=/etc/gw/tls.key,/etc/gw/tls.key,/etc/gw/tls.crt
//! LIFECYCLE_FDS=6
//! LIFECYCLE_PARENT_PID=4242
//! ```
//!
//! Each listener entry is `name=network:address`, each file entry a path;
//! every field is percent-escaped (see [`escape`]). Descriptors start at 3:
//! listeners then files, in entry order.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use crate::environment::Environment;
use crate::error::{Error, Result};
use crate::escape::{escape, unescape};
use crate::inventory::Inventory;
use crate::spec::{ListenAddress, ListenerSpec};

mod mox;
mod names;

pub use mox::{MOX_FILES, MOX_SOCKETS};
pub use names::{VarNames, DEFAULT_PREFIX};

/// The first passed descriptor, in both our protocol and systemd's.
pub const FIRST_PASSED_FD: i32 = 3;

/// What a hand-off declares: the listeners and files, in descriptor order
/// (listener `i` is fd `3 + i`, file `j` is fd `3 + listeners.len() + j`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Listeners, in entry order.
    pub listeners: Vec<ListenerSpec>,
    /// Files, in entry order; a path may repeat.
    pub files: Vec<PathBuf>,
}

impl Manifest {
    /// The manifest describing `inventory` (listeners then files).
    pub fn of_inventory(inventory: &Inventory) -> Self {
        Manifest {
            listeners: inventory.listeners.iter().map(|l| l.spec.clone()).collect(),
            files: inventory.files.iter().map(|f| f.path.clone()).collect(),
        }
    }

    /// Number of descriptors the manifest declares.
    pub fn fd_count(&self) -> usize {
        self.listeners.len() + self.files.len()
    }

    /// The variables a parent with pid `parent_pid` sets for its child.
    ///
    /// ```
    /// use lifecycle_handoff::{ListenerSpec, Manifest, VarNames};
    ///
    /// let manifest = Manifest {
    ///     listeners: vec![ListenerSpec::tcp("smtp", "127.0.0.1:25".parse().unwrap())],
    ///     files: vec!["/etc/key,1.pem".into()],
    /// };
    /// let vars = manifest.encode(&VarNames::default(), 4242);
    /// let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap();
    /// assert_eq!(get("LIFECYCLE_SOCKETS"), "smtp=tcp:127.0.0.1:25");
    /// assert_eq!(get("LIFECYCLE_FILES"), "/etc/key%2C1.pem");
    /// assert_eq!(get("LIFECYCLE_FDS"), "2");
    /// assert_eq!(get("LIFECYCLE_PARENT_PID"), "4242");
    /// ```
    pub fn encode(&self, names: &VarNames, parent_pid: u32) -> Vec<(OsString, OsString)> {
        vec![
            (names.sockets().into(), self.encode_sockets().into()),
            (names.files().into(), self.encode_files().into()),
            (names.fds().into(), self.fd_count().to_string().into()),
            (names.parent_pid().into(), parent_pid.to_string().into()),
        ]
    }

    /// The value of `<PREFIX>_SOCKETS`.
    pub fn encode_sockets(&self) -> String {
        let entries: Vec<String> = self
            .listeners
            .iter()
            .map(|spec| {
                let address = match spec.address() {
                    ListenAddress::Tcp(addr) => escape(addr.to_string().as_bytes()),
                    ListenAddress::Unix(path) => escape(path.as_os_str().as_bytes()),
                };
                format!(
                    "{}={}:{}",
                    escape(spec.name().as_bytes()),
                    spec.network(),
                    address
                )
            })
            .collect();
        entries.join(",")
    }

    /// The value of `<PREFIX>_FILES`.
    pub fn encode_files(&self) -> String {
        let entries: Vec<String> = self
            .files
            .iter()
            .map(|p| escape(p.as_os_str().as_bytes()))
            .collect();
        entries.join(",")
    }

    /// Reads the hand-off variables named by `names` from `env`, removes
    /// them, and checks that `<PREFIX>_PARENT_PID` is `actual_parent_pid`
    /// (pass `getppid()`): a grandchild that inherited the variables must not
    /// take descriptors that were never passed to it.
    ///
    /// All four variables are removed once read, even when decoding fails.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use lifecycle_handoff::{Manifest, VarNames};
    ///
    /// let mut env = BTreeMap::new();
    /// env.insert("LIFECYCLE_SOCKETS".into(), "web=tcp:[::1]:8080".into());
    /// env.insert("LIFECYCLE_FILES".into(), "".into());
    /// env.insert("LIFECYCLE_FDS".into(), "1".into());
    /// env.insert("LIFECYCLE_PARENT_PID".into(), "7".into());
    /// let manifest = Manifest::decode(&mut env, &VarNames::default(), 7).unwrap();
    /// assert_eq!(manifest.listeners[0].name(), "web");
    /// assert!(env.is_empty());
    /// ```
    pub fn decode(
        env: &mut impl Environment,
        names: &VarNames,
        actual_parent_pid: u32,
    ) -> Result<Manifest> {
        let [sockets, files, fds, parent_pid] = names.all().map(|name| env.var(name));
        for name in names.all() {
            env.remove_var(name);
        }

        const FIX: &str = "it is set by the privileged parent for its child; start the program \
                           as root (privileged mode) or choose another mode";
        let missing = |var: &str| Error::MissingVariable {
            var: var.to_owned(),
            fix: FIX,
        };

        let parent_pid = parent_pid.ok_or_else(|| missing(names.parent_pid()))?;
        let parent_pid = parse_number(names.parent_pid(), &parent_pid, "process id")?;
        let parent_pid = u32::try_from(parent_pid).map_err(|_| Error::NotANumber {
            var: names.parent_pid().to_owned(),
            value: parent_pid.to_string(),
            expected: "process id",
            fix: NUMBER_FIX,
        })?;
        if parent_pid != actual_parent_pid {
            return Err(Error::WrongParent {
                var: names.parent_pid().to_owned(),
                value: parent_pid,
                actual: actual_parent_pid,
            });
        }

        let sockets = sockets.ok_or_else(|| missing(names.sockets()))?;
        let files = files.ok_or_else(|| missing(names.files()))?;
        let fds = fds.ok_or_else(|| missing(names.fds()))?;
        let declared = parse_number(names.fds(), &fds, "descriptor count")?;

        let listeners = decode_sockets(names.sockets(), &sockets)?;
        let files = decode_files(names.files(), &files)?;
        let manifest = Manifest { listeners, files };
        if usize::try_from(declared).ok() != Some(manifest.fd_count()) {
            return Err(Error::FdCountMismatch {
                var: names.fds().to_owned(),
                sockets_var: names.sockets().to_owned(),
                files_var: names.files().to_owned(),
                declared: usize::try_from(declared).unwrap_or(usize::MAX),
                entries: manifest.fd_count(),
            });
        }
        Ok(manifest)
    }
}

const NUMBER_FIX: &str = "it must be a decimal number as written by the parent; unset it or \
                          start the program from its parent";

fn utf8<'a>(var: &str, value: &'a OsStr) -> Result<&'a str> {
    value.to_str().ok_or_else(|| Error::NotUtf8 {
        var: var.to_owned(),
        value: value.to_string_lossy().into_owned(),
    })
}

/// Parses a decimal number variable (no sign, no spaces).
pub(crate) fn parse_number(var: &str, value: &OsStr, expected: &'static str) -> Result<u64> {
    let text = utf8(var, value)?;
    let bad = || Error::NotANumber {
        var: var.to_owned(),
        value: text.to_owned(),
        expected,
        fix: NUMBER_FIX,
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse::<u64>().map_err(|_| bad())
}

fn empty_entry(var: &str, index: usize, value: &str) -> Error {
    Error::EmptyEntry {
        var: var.to_owned(),
        index,
        value: value.to_owned(),
    }
}

fn decode_sockets(var: &str, value: &OsStr) -> Result<Vec<ListenerSpec>> {
    let value = utf8(var, value)?;
    let mut listeners: Vec<ListenerSpec> = Vec::new();
    if value.is_empty() {
        return Ok(listeners);
    }
    for (index, entry) in value.split(',').enumerate() {
        if entry.is_empty() {
            return Err(empty_entry(var, index, value));
        }
        let bad_entry = |problem| Error::BadEntry {
            var: var.to_owned(),
            index,
            entry: entry.to_owned(),
            problem,
        };
        let (name, rest) = entry
            .split_once('=')
            .ok_or_else(|| bad_entry("no `=` after the name"))?;
        let (network, address) = rest
            .split_once(':')
            .ok_or_else(|| bad_entry("no `:` after the network"))?;
        let name_offset = 0;
        let address_offset = name.len() + 1 + network.len() + 1;
        let name = unescape(name).map_err(|(position, problem)| {
            bad_escape(var, index, entry, name_offset + position, problem)
        })?;
        let address = unescape(address).map_err(|(position, problem)| {
            bad_escape(var, index, entry, address_offset + position, problem)
        })?;
        let name = String::from_utf8(name).map_err(|_| Error::BadName {
            var: var.to_owned(),
            index,
            entry: entry.to_owned(),
            problem: "not UTF-8 once unescaped",
        })?;
        if name.is_empty() {
            return Err(Error::BadName {
                var: var.to_owned(),
                index,
                entry: entry.to_owned(),
                problem: "empty; every listener has a name",
            });
        }
        let bad_address = |problem: String| Error::BadAddress {
            var: var.to_owned(),
            index,
            entry: entry.to_owned(),
            problem,
        };
        let spec = match network {
            "tcp" => {
                let text = std::str::from_utf8(&address)
                    .map_err(|_| bad_address("a TCP address is ASCII, this is not UTF-8".into()))?;
                let addr: SocketAddr = text.parse().map_err(|_| {
                    bad_address(format!(
                        "{text:?} is not IP:port (such as 0.0.0.0:25 or [::]:25)"
                    ))
                })?;
                ListenerSpec::tcp(name, addr)
            }
            "unix" => {
                if address.is_empty() {
                    return Err(bad_address("empty Unix socket path".into()));
                }
                if address.contains(&0) {
                    return Err(bad_address(
                        "Unix socket path contains a NUL byte (abstract sockets are not supported)"
                            .into(),
                    ));
                }
                ListenerSpec::unix(name, PathBuf::from(OsString::from_vec(address)))
            }
            other => {
                return Err(Error::UnknownNetwork {
                    var: var.to_owned(),
                    index,
                    entry: entry.to_owned(),
                    network: other.to_owned(),
                })
            }
        };
        if let Some(first) = listeners.iter().position(|l| l.name() == spec.name()) {
            return Err(Error::DuplicateName {
                var: var.to_owned(),
                name: spec.name().to_owned(),
                first,
                second: index,
            });
        }
        listeners.push(spec);
    }
    Ok(listeners)
}

fn decode_files(var: &str, value: &OsStr) -> Result<Vec<PathBuf>> {
    let value = utf8(var, value)?;
    let mut files = Vec::new();
    if value.is_empty() {
        return Ok(files);
    }
    for (index, entry) in value.split(',').enumerate() {
        if entry.is_empty() {
            return Err(empty_entry(var, index, value));
        }
        let path = unescape(entry)
            .map_err(|(position, problem)| bad_escape(var, index, entry, position, problem))?;
        if path.is_empty() || path.contains(&0) {
            return Err(Error::BadAddress {
                var: var.to_owned(),
                index,
                entry: entry.to_owned(),
                problem: "a file path must be non-empty and free of NUL bytes".into(),
            });
        }
        files.push(PathBuf::from(OsString::from_vec(path)));
    }
    Ok(files)
}

fn bad_escape(
    var: &str,
    index: usize,
    entry: &str,
    position: usize,
    problem: &'static str,
) -> Error {
    Error::BadEscape {
        var: var.to_owned(),
        index,
        entry: entry.to_owned(),
        position,
        problem,
    }
}

/// What a privileged parent gives its child: the variables to set and the
/// descriptors to place at 3, 4, ... in this order (listeners, then files).
#[derive(Debug)]
pub struct ChildHandoff<'a> {
    /// `<PREFIX>_SOCKETS`, `_FILES`, `_FDS`, `_PARENT_PID` and their values.
    pub vars: Vec<(OsString, OsString)>,
    /// The descriptors, in the order they must appear from fd 3 on.
    pub fds: Vec<BorrowedFd<'a>>,
}

impl<'a> ChildHandoff<'a> {
    /// The hand-off of everything in `inventory` from the parent with pid
    /// `parent_pid` (pass `std::process::id()`).
    ///
    /// ```
    /// use lifecycle_handoff::{bind_listener, ChildHandoff, Inventory, ListenerSpec, PassedListener, VarNames};
    ///
    /// let spec = ListenerSpec::tcp("web", "127.0.0.1:0".parse().unwrap());
    /// let (fd, bound) = bind_listener(&spec).unwrap();
    /// let mut inventory = Inventory::default();
    /// inventory.listeners.push(PassedListener { spec: spec.with_address(bound), fd });
    /// let child = ChildHandoff::new(&inventory, &VarNames::default(), std::process::id());
    /// assert_eq!(child.fds.len(), 1);
    /// assert_eq!(child.vars.len(), 4);
    /// ```
    pub fn new(inventory: &'a Inventory, names: &VarNames, parent_pid: u32) -> Self {
        let vars = Manifest::of_inventory(inventory).encode(names, parent_pid);
        let fds = inventory
            .listeners
            .iter()
            .map(|l| l.fd.as_fd())
            .chain(inventory.files.iter().map(|f| f.fd.as_fd()))
            .collect();
        ChildHandoff { vars, fds }
    }
}
