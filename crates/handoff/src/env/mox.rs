//! Reading mox's own hand-off (`MOX_SOCKETS`, `MOX_FILES`), for programs
//! migrating from mox's privileged parent.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::{empty_entry, utf8, Manifest};
use crate::environment::Environment;
use crate::error::{Error, Result};
use crate::spec::ListenerSpec;

/// mox's listener variable: comma-joined addresses.
pub const MOX_SOCKETS: &str = "MOX_SOCKETS";
/// mox's file variable: comma-joined paths.
pub const MOX_FILES: &str = "MOX_FILES";

impl Manifest {
    /// Reads mox's `MOX_SOCKETS` (comma-joined TCP addresses) and
    /// `MOX_FILES` (comma-joined paths), removing both. Each listener is
    /// named by its address as written (`0.0.0.0:25`); `listen()` also finds
    /// it by address. mox writes no parent pid, so there is no guard.
    ///
    /// mox does not escape, so a path with a comma cannot be expressed.
    pub fn decode_mox(env: &mut impl Environment) -> Result<Manifest> {
        let sockets = env.var(MOX_SOCKETS);
        let files = env.var(MOX_FILES);
        env.remove_var(MOX_SOCKETS);
        env.remove_var(MOX_FILES);
        let sockets = sockets.ok_or_else(|| Error::MissingVariable {
            var: MOX_SOCKETS.to_owned(),
            fix: "mox's privileged parent sets it; start from that parent or use the \
                  LIFECYCLE_ variables",
        })?;
        let sockets = utf8(MOX_SOCKETS, &sockets)?;
        let mut listeners: Vec<ListenerSpec> = Vec::new();
        if !sockets.is_empty() {
            for (index, entry) in sockets.split(',').enumerate() {
                if entry.is_empty() {
                    return Err(empty_entry(MOX_SOCKETS, index, sockets));
                }
                let addr: SocketAddr = entry.parse().map_err(|_| Error::BadAddress {
                    var: MOX_SOCKETS.to_owned(),
                    index,
                    entry: entry.to_owned(),
                    problem: "not an IP:port address such as 0.0.0.0:25 or [::]:25".to_owned(),
                })?;
                if let Some(first) = listeners.iter().position(|l| l.name() == entry) {
                    return Err(Error::DuplicateName {
                        var: MOX_SOCKETS.to_owned(),
                        name: entry.to_owned(),
                        first,
                        second: index,
                    });
                }
                listeners.push(ListenerSpec::tcp(entry, addr));
            }
        }
        let mut paths = Vec::new();
        if let Some(files) = files {
            let bytes = files.as_bytes();
            if !bytes.is_empty() {
                for (index, entry) in bytes.split(|b| *b == b',').enumerate() {
                    if entry.is_empty() {
                        return Err(empty_entry(
                            MOX_FILES,
                            index,
                            &String::from_utf8_lossy(bytes),
                        ));
                    }
                    paths.push(PathBuf::from(OsStr::from_bytes(entry)));
                }
            }
        }
        Ok(Manifest {
            listeners,
            files: paths,
        })
    }
}
