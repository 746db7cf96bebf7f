//! systemd socket activation: `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`.
//!
//! systemd passes `LISTEN_FDS` descriptors starting at
//! [`SD_LISTEN_FDS_START`] (3), addressed to the process `LISTEN_PID`, named
//! (colon-separated) by `LISTEN_FDNAMES` from each socket's
//! `FileDescriptorName=`. A name maps to the listener of that name; an
//! unnamed descriptor (no `LISTEN_FDNAMES`, an empty name, or `unknown`)
//! is found by its address and takes the name of the listener that claims
//! it ([`Handoff::prepare`](crate::Handoff::prepare)). All three variables
//! are removed once read.

use std::os::fd::{AsFd, RawFd};

use crate::env::parse_number;
use crate::environment::Environment;
use crate::error::{Error, Result};
use crate::inventory::{Inventory, PassedListener};
use crate::spec::ListenerSpec;
use crate::validate::{adopt, inspect_listener};

/// The first descriptor systemd passes.
pub const SD_LISTEN_FDS_START: RawFd = 3;
/// Number of passed descriptors.
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// The process the descriptors are for.
pub const LISTEN_PID: &str = "LISTEN_PID";
/// Colon-separated descriptor names.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

/// The most descriptors accepted from systemd (a sanity bound: a larger
/// `LISTEN_FDS` is corrupt).
const MAX_FDS: u64 = 65_536;

/// What systemd's variables declare: one optional name per descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdManifest {
    /// The name of each descriptor from `SD_LISTEN_FDS_START` on; `None`
    /// for an unnamed one (matched by address).
    pub names: Vec<Option<String>>,
}

impl SystemdManifest {
    /// Reads and removes `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`,
    /// checking that `LISTEN_PID` is `actual_pid` (pass `getpid()`).
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use lifecycle_handoff::SystemdManifest;
    ///
    /// let mut env = BTreeMap::new();
    /// env.insert("LISTEN_FDS".into(), "2".into());
    /// env.insert("LISTEN_PID".into(), "99".into());
    /// env.insert("LISTEN_FDNAMES".into(), "smtp:unknown".into());
    /// let m = SystemdManifest::decode(&mut env, 99).unwrap();
    /// assert_eq!(m.names, vec![Some("smtp".to_string()), None]);
    /// assert!(env.is_empty());
    /// ```
    pub fn decode(env: &mut impl Environment, actual_pid: u32) -> Result<SystemdManifest> {
        let fds = env.var(LISTEN_FDS);
        let pid = env.var(LISTEN_PID);
        let names = env.var(LISTEN_FDNAMES);
        for var in [LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES] {
            env.remove_var(var);
        }
        const FIX: &str = "systemd sets LISTEN_FDS and LISTEN_PID together for a socket-activated \
                           service; start the program from its .socket unit or choose another mode";
        let pid = pid.ok_or(Error::MissingVariable {
            var: LISTEN_PID.to_owned(),
            fix: FIX,
        })?;
        let pid = parse_number(LISTEN_PID, &pid, "process id")?;
        if pid != u64::from(actual_pid) {
            return Err(Error::WrongListenPid {
                value: u32::try_from(pid).unwrap_or(u32::MAX),
                actual: actual_pid,
            });
        }
        let fds = fds.ok_or(Error::MissingVariable {
            var: LISTEN_FDS.to_owned(),
            fix: FIX,
        })?;
        let count = parse_number(LISTEN_FDS, &fds, "descriptor count")?;
        if count > MAX_FDS {
            return Err(Error::NotANumber {
                var: LISTEN_FDS.to_owned(),
                value: count.to_string(),
                expected: "descriptor count of at most 65536",
                fix: "systemd never passes that many; unset LISTEN_FDS",
            });
        }
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        let names = match names {
            None => vec![None; count],
            Some(value) => {
                let text = value.to_str().ok_or_else(|| Error::NotUtf8 {
                    var: LISTEN_FDNAMES.to_owned(),
                    value: value.to_string_lossy().into_owned(),
                })?;
                let names: Vec<Option<String>> = if text.is_empty() && count == 0 {
                    Vec::new()
                } else {
                    text.split(':')
                        .map(|n| (!n.is_empty() && n != "unknown").then(|| n.to_owned()))
                        .collect()
                };
                if names.len() != count {
                    return Err(Error::FdNamesCount {
                        names: text.to_owned(),
                        count: names.len(),
                        fds: count,
                    });
                }
                names
            }
        };
        Ok(SystemdManifest { names })
    }

    /// Adopts and checks the descriptors from `first_fd` on: each must be a
    /// listening TCP or Unix stream socket. Named ones become listeners of
    /// that name; unnamed ones are named by their address.
    ///
    /// # Safety
    ///
    /// Descriptors `first_fd .. first_fd + names.len()` must have been passed
    /// to this process, nothing else in it may own them, and this must be
    /// called at most once for them.
    pub(crate) unsafe fn adopt(&self, first_fd: RawFd) -> Result<Inventory> {
        let mut inventory = Inventory::default();
        for (fd, (index, name)) in (first_fd..).zip(self.names.iter().enumerate()) {
            let entry = match name {
                Some(name) => format!("{LISTEN_FDS} descriptor {index}, {LISTEN_FDNAMES} {name:?}"),
                None => format!("{LISTEN_FDS} descriptor {index}, unnamed"),
            };
            // SAFETY: forwarded from this function's contract; `fd` advances
            // by one per declared descriptor, so each is adopted once.
            let owned = unsafe { adopt(fd, &entry) }?;
            let address = inspect_listener(owned.as_fd(), &entry)?;
            let name = name.clone().unwrap_or_else(|| address.to_string());
            inventory.listeners.push(PassedListener {
                spec: ListenerSpec::new(name, address),
                fd: owned,
            });
        }
        Ok(inventory)
    }
}
