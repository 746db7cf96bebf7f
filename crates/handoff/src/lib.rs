//! Pass listening sockets and privileged files from one process to the next.
//!
//! `lifecycle-handoff` is the synchronous half of actix-lifecycle: no actix,
//! no async. It decides how a process gets its descriptors (bind them, take
//! them from a privileged parent, or take them from systemd), validates every
//! inherited descriptor before use, and hands the result over as an
//! [`Inventory`] of [`OwnedFd`](std::os::fd::OwnedFd)s.
//!
//! # Modes
//!
//! [`Handoff::detect`] picks one of four [`Mode`]s and says why
//! ([`Handoff::reason`], for the start-up log). The rule, first match wins
//! (see [`HandoffBuilder::choose`]):
//!
//! 1. a mode forced with [`HandoffBuilder::mode`] (the explicit override);
//! 2. any `LIFECYCLE_*` hand-off variable set → [`Mode::Inherited`];
//! 3. `MOX_SOCKETS` set and [`HandoffBuilder::mox_compat`] on → inherited, mox format;
//! 4. `LISTEN_FDS` or `LISTEN_PID` set → [`Mode::Systemd`];
//! 5. effective uid 0 → [`Mode::Privileged`];
//! 6. otherwise → [`Mode::Immediate`].
//!
//! In every mode the program makes the same calls, as with mox:
//! [`Handoff::listen`] for each listener and [`Handoff::open_privileged`] for
//! each secret file. Privileged mode binds/opens and keeps a duplicate of
//! each for the child; immediate mode binds/opens; inherited and systemd
//! modes hand out the passed descriptors (listeners by name, files first in
//! first out per path).
//!
//! # The hand-off protocol
//!
//! A privileged parent passes its descriptors to its child at fd 3, 4, ...:
//! **listeners first, then files, each in entry order**, and describes them
//! in four variables (the prefix `LIFECYCLE` is configurable):
//!
//! | variable | value |
//! |---|---|
//! | `LIFECYCLE_SOCKETS` | comma-separated `name=network:address` entries; network `tcp` (address `IP:port`, `[v6]:port`) or `unix` (a path) |
//! | `LIFECYCLE_FILES` | comma-separated paths; a path may repeat (each open is its own fd) |
//! | `LIFECYCLE_FDS` | the number of descriptors, a guard against truncation |
//! | `LIFECYCLE_PARENT_PID` | the parent's pid |
//!
//! Every name, address and path is percent-escaped ([`escape`]): each byte
//! outside `A-Z a-z 0-9 - . _ ~ / : @ + [ ]` is written `%XX`, so commas,
//! `=`, `%`, newlines and non-UTF-8 bytes round-trip and values stay ASCII.
//! The decoder is strict: a bad escape, an unescaped byte, an empty entry,
//! an unknown network, a duplicate name or a count mismatch is an [`Error`]
//! naming the variable, the entry and the fix.
//!
//! The child accepts the hand-off only if `LIFECYCLE_PARENT_PID` equals its
//! `getppid()`, so a grandchild that inherited the variables does not take
//! descriptors that were never passed to it; and it removes the variables
//! once read. Each descriptor is then checked before use (open; socket vs
//! file; listening; stream type and family; `getsockname` against the
//! declared address, port 0 matching any port only when declared) and made
//! non-blocking (listeners) and close-on-exec.
//!
//! systemd socket activation uses `LISTEN_FDS`, `LISTEN_PID` and
//! `LISTEN_FDNAMES` (see [`SystemdManifest`]): names map to listener names,
//! unnamed descriptors match by address. mox's `MOX_SOCKETS`/`MOX_FILES`
//! can be read with [`Manifest::decode_mox`].
//!
//! Detection removes environment variables, which is only sound before other
//! threads exist: call [`Handoff::detect`] first thing in `main` (in a
//! process with more threads it refuses with [`Error::ThreadsRunning`]).
//!
//! # The privileged start
//!
//! In privileged mode the parent looks up the service user first
//! ([`TargetUser::lookup`]: an unknown user fails before anything is bound),
//! binds and opens, blocks the signals it will forward ([`Supervisor::new`]),
//! and starts the child with [`ChildSpawner`]: the same executable (opened
//! by the parent, executed by descriptor, so the service user needs no
//! access to its directories) and arguments, the hand-off variables
//! ([`ChildHandoff`]), fds placed at 3..
//! with a two-step `dup2` that cannot clobber a source ([`pass_fds`]), every
//! other fd close-on-exec, and before exec an empty signal mask,
//! `setgroups([])`, `setgid`, `setuid`, `PR_SET_NO_NEW_PRIVS` and
//! `PR_SET_PDEATHSIG(SIGKILL)`. The child calls
//! [`verify_cannot_regain_root`]. The parent keeps its listeners (for
//! upgrades), closes its copies of the files ([`Inventory::close_files`]),
//! forwards SIGTERM, SIGINT, SIGHUP and SIGUSR2 and exits with the child's
//! status ([`Supervisor::wait`], 128 + signal for a signal death).
//!
//! # Zero-downtime upgrades
//!
//! [`UpgradeSupervisor`] is the privileged parent with upgrades (it replaces
//! [`Supervisor`] when upgrades are wanted). Every child it starts gets,
//! besides the listeners and files, a readiness channel and its lineage:
//!
//! | variable | value |
//! |---|---|
//! | `LIFECYCLE_READY_FD` | the child's end of the readiness channel (a connected Unix stream socket): always the descriptor right after the listeners and files (`3 + LIFECYCLE_FDS`) |
//! | `LIFECYCLE_GENERATION` | 1 for the first child, +1 per upgrade attempt |
//! | `LIFECYCLE_UPGRADES_OK`, `LIFECYCLE_UPGRADES_FAILED` | the parent's upgrade counters when it started the child |
//!
//! The four are optional (a parent without upgrades sets none) and are
//! removed by [`Handoff::detect`] with the others; `LIFECYCLE_FDS` still
//! counts listeners and files only, so the ready descriptor is never taken
//! for one of them. The child takes [`Handoff::take_ready_channel`] and
//! [`Handoff::lineage`], and calls [`ReadyChannel::notify_ready`] once every
//! listener accepts, then may read the parent's upgrade counters with
//! [`ReadyChannel::recv_update`] (sent after every upgrade outcome, for its
//! `lifecycle_upgrades_total{result}` metric). The upgrade, on SIGHUP or
//! SIGUSR2 to the parent:
//!
//! 1. `RELOADING=1` to systemd (when `NOTIFY_SOCKET` is set);
//! 2. every privileged file is re-opened from its path (a rotated
//!    certificate is picked up);
//! 3. generation n+1 of the program *path* resolved at start-up is started
//!    (so a binary replaced with `mv` is the one that runs) with the same
//!    listening sockets the parent kept; the re-opened files are closed in
//!    the parent;
//! 4. the parent waits for `READY=1` on the new child's channel (default 30 s);
//! 5. ready: generation n's channel is closed, then it gets SIGTERM (so it
//!    can tell this drain from a stop with [`ChannelWatch`]); it stops
//!    accepting and drains
//!    while generation n+1 accepts from the same kernel queues (no
//!    connection is refused); `READY=1` and `STATUS=serving generation n+1`;
//! 6. not ready (exited, closed its channel, timed out): it is reaped,
//!    generation n keeps serving, `READY=1` and
//!    `STATUS=upgrade failed: ...`. One that timed out may already serve
//!    sessions it accepted: its channel is closed and it gets SIGTERM, and
//!    is killed only after [`UpgradeSupervisor::child_grace`] (the same
//!    holds for a new child still starting when the service stops).
//!
//! One upgrade runs at a time; a signal during one is queued (at most one
//! waits). Each step is reported to the caller as a [`SupervisorEvent`]
//! (the crate logs nothing itself). Under systemd the parent is the main
//! process for its whole life: it sends `READY=1` with `MAINPID=<own pid>`
//! when generation 1 is ready and `STOPPING=1` when it forwards SIGTERM or
//! SIGINT, and its children never see `NOTIFY_SOCKET`, `WATCHDOG_USEC` or
//! `WATCHDOG_PID`.
//!
//! Notifications go through [`Notifier`], the workspace's one synchronous
//! `sd_notify` sender (actix-lifecycle's `SystemdNotifier` actor uses it
//! too): the address is parsed once from [`NotifyEnv`] (which reads
//! `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`, from the process or
//! any [`Environment`]), `@name` reaches an abstract socket, and a send waits
//! at most [`DEFAULT_SEND_TIMEOUT`] when systemd's queue is full.
//!
//! Without a privileged parent, a running process hands its listeners to a
//! successor of itself with [`SuccessorHandoff`]: the same protocol, no
//! parent-death signal (the successor outlives it), and `MAINPID=<successor>`
//! to systemd once the successor is ready.
//!
//! A process that handles SIGHUP or SIGUSR2 itself must not die from one
//! that arrives before its handlers exist (a reload queued during a
//! hand-over reaches the successor as soon as it is the main process): hold
//! them with [`HeldSignals`] first thing in `main`, and release them once
//! the handlers are installed.
//!
//! # Example
//!
//! A parent encodes its kept inventory; the child decodes it (here from a
//! map standing in for the environment):
//!
//! ```
//! use std::collections::BTreeMap;
//! use lifecycle_handoff::{ChildHandoff, Handoff, ListenerSpec, Manifest, Mode, VarNames};
//!
//! // Parent (privileged mode: it binds and keeps a copy for the child).
//! let mut parent = Handoff::builder().mode(Mode::Privileged).detect()?;
//! let smtp = ListenerSpec::tcp("smtp", "127.0.0.1:0".parse().unwrap());
//! let _served_elsewhere = parent.listen(&smtp)?;
//! let kept = parent.into_inventory();
//! let child = ChildHandoff::new(&kept, &VarNames::default(), 4242);
//! assert_eq!(child.fds.len(), 1); // goes to fd 3 in the child
//!
//! // Child: the same variables, read back (and removed).
//! let mut env: BTreeMap<_, _> = child.vars.into_iter().collect();
//! let manifest = Manifest::decode(&mut env, &VarNames::default(), 4242)?;
//! assert_eq!(manifest.listeners[0].name(), "smtp");
//! assert_eq!(manifest.listeners[0].address(), kept.listeners[0].spec.address());
//! assert!(env.is_empty());
//!
//! // A grandchild that inherited the variables is refused.
//! let mut env: BTreeMap<_, _> = ChildHandoff::new(&kept, &VarNames::default(), 4242)
//!     .vars.into_iter().collect();
//! assert!(Manifest::decode(&mut env, &VarNames::default(), 4243).is_err());
//! # Ok::<(), lifecycle_handoff::Error>(())
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

// The README's examples are compiled with the doc tests (those that bind
// privileged ports or spawn a child are not run).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod bind;
mod child_process;
mod control;
mod env;
mod environment;
mod error;
mod escape;
mod exec;
mod handoff;
mod inventory;
mod lineage;
mod mode;
mod notify;
mod privilege;
mod ready;
mod secure_path;
mod signals;
mod spawn;
mod spec;
mod successor;
mod supervise;
mod systemd;
mod upgrade;
mod validate;

#[cfg(test)]
mod tests;

pub use bind::{bind_listener, open_file};
pub use child_process::ChildProcess;
pub use control::{
    error_reply, upgrade_reply, ControlAccess, ControlCommand, ControlError, ControlRequest,
    ControlSocket, CONTROL_IDLE_TIMEOUT, CONTROL_LISTENER_NAME, CONTROL_PROTOCOL_VERSION,
    MAX_CONTROL_CLIENTS, MAX_REQUEST_LINE,
};
pub use env::{
    ChildHandoff, Manifest, VarNames, DEFAULT_PREFIX, FIRST_PASSED_FD, MOX_FILES, MOX_SOCKETS,
};
pub use environment::{Environment, ProcessEnvironment};
pub use error::{Error, Result};
pub use escape::{escape, unescape};
pub use handoff::{Handoff, HandoffBuilder, ModeChoice};
pub use inventory::{Inventory, PassedFile, PassedListener};
pub use lineage::Lineage;
pub use mode::Mode;
pub use notify::{
    Notifier, NotifyEnv, NotifyError, NotifyState, DEFAULT_SEND_TIMEOUT, NOTIFY_SOCKET,
    WATCHDOG_PID, WATCHDOG_USEC,
};
pub use privilege::{drop_privileges_in_place, verify_cannot_regain_root, TargetUser};
pub use ready::{ChannelWatch, ReadyChannel, ReadyPair, ReadyReceiver, ReadyState, READY_MESSAGE};
pub use signals::{HeldSignals, UPGRADE_SIGNALS};
pub use spawn::{pass_fds, ChildSpawner};
pub use spec::{FileSpec, ListenAddress, ListenerSpec, Network, DEFAULT_BACKLOG};
pub use successor::{Successor, SuccessorHandoff};
pub use supervise::{exit_code, Supervisor, FORWARDED_SIGNALS};
pub use systemd::{SystemdManifest, LISTEN_FDNAMES, LISTEN_FDS, LISTEN_PID, SD_LISTEN_FDS_START};
pub use upgrade::{
    SupervisorEvent, UpgradeFailure, UpgradeStats, UpgradeSupervisor, CHILD_CONTROL_NAME,
    DEFAULT_CHILD_GRACE, DEFAULT_READY_TIMEOUT,
};
pub use validate::{inspect_listener, validate_file, validate_listener};
