//! What an `FdBroker` owns: every listener and file as an [`OwnedFd`].

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use crate::spec::ListenerSpec;

/// A listening socket and the spec it was bound or validated against.
#[derive(Debug)]
pub struct PassedListener {
    /// What the listener is (name, address, backlog). For a TCP listener
    /// declared with port 0 in this process, the address is the bound one.
    pub spec: ListenerSpec,
    /// The listening socket: non-blocking, close-on-exec.
    pub fd: OwnedFd,
}

/// An open privileged file and the path it was opened from.
#[derive(Debug)]
pub struct PassedFile {
    /// The path the file was opened from (not re-resolved).
    pub path: PathBuf,
    /// The open file: close-on-exec, read-only.
    pub fd: OwnedFd,
}

/// Every descriptor a process holds for its lifecycle, in hand-off order:
/// listeners, then files. Each fd is owned exactly once, so nothing is
/// closed twice and dropping the inventory closes everything left in it.
#[derive(Debug, Default)]
pub struct Inventory {
    /// Listeners, in entry order.
    pub listeners: Vec<PassedListener>,
    /// Files, in entry order; a path may repeat.
    pub files: Vec<PassedFile>,
}

impl Inventory {
    /// True when the inventory holds no descriptor.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty() && self.files.is_empty()
    }

    /// Number of descriptors held.
    pub fn len(&self) -> usize {
        self.listeners.len() + self.files.len()
    }

    /// Closes every file (the privileged parent does this once the child
    /// runs: the child has its own copies of the secrets) and returns how
    /// many were closed. Listeners stay.
    pub fn close_files(&mut self) -> usize {
        let count = self.files.len();
        self.files.clear();
        count
    }
}
