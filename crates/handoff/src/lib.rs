//! Pass listening sockets and privileged files from one process to the next.
//!
//! `lifecycle-handoff` is the synchronous half of actix-lifecycle: no actix,
//! no async. It decides how a process gets its descriptors (bind them, take
//! them from a privileged parent, or take them from systemd), validates every
//! inherited descriptor before use, and hands the result over as an
//! [`Inventory`] of [`OwnedFd`](std::os::fd::OwnedFd)s.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod inventory;
mod spec;

pub use inventory::{Inventory, PassedFile, PassedListener};
pub use spec::{FileSpec, ListenAddress, ListenerSpec, Network, DEFAULT_BACKLOG};
